"""
A Flask application that offloads work to the task server (docs/clients).

One client for the whole process: its threads share its one connection.
"""

import os

from flask import Flask, jsonify, request

from taskservice.errors import JobNotFound, TaskServiceError, Unavailable
from taskservice.sync import Client

app = Flask(__name__)
tasks = Client(os.environ.get("TASKSERVICE_SERVER", "tcp:127.0.0.1:12345"))


@app.get("/fib/<int:n>")
def fib(n):
    # A short call: wait for it, at most 10 s (then it is cancelled).
    return jsonify(result=tasks.call("fib", n, timeout=10))


@app.post("/campaigns")
def start_campaign():
    # Long work: a durable job; answer at once with its id.
    job = tasks.submit("send_mail", {"to": request.get_json()["to"]})
    return jsonify(job=job.id), 202


@app.get("/campaigns/<job_id>")
def campaign(job_id):
    try:
        job = tasks.attach(job_id).status()
    except JobNotFound:
        return jsonify(error="no such campaign"), 404
    return jsonify(state=job["state"], progress=job["progress"], result=job["result"])


@app.errorhandler(TaskServiceError)
def task_error(error):
    status = 503 if isinstance(error, Unavailable) else 502
    return jsonify(error=error.message, code=error.code), status
