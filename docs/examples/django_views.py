"""
Django views that offload work to the task server (docs/clients): route
them in urls.py as usual, e.g. ``path("fib/<int:n>", views.fib)``.

One client per process, made at import: it connects on its first call
(after the fork, with a pre-fork server such as gunicorn) and its threads
share the connection.
"""

import json
import os

from django.http import JsonResponse
from django.views.decorators.http import require_GET, require_POST

from taskservice.errors import JobNotFound
from taskservice.sync import Client

tasks = Client(os.environ.get("TASKSERVICE_SERVER", "tcp:127.0.0.1:12345"))


@require_GET
def fib(request, n):
    return JsonResponse({"result": tasks.call("fib", n, timeout=10)})


@require_POST
def start_campaign(request):
    job = tasks.submit("send_mail", {"to": json.loads(request.body)["to"]})
    return JsonResponse({"job": job.id}, status=202)


@require_GET
def campaign(request, job_id):
    try:
        job = tasks.attach(job_id).status()
    except JobNotFound:
        return JsonResponse({"error": "no such campaign"}, status=404)
    return JsonResponse({"state": job["state"], "progress": job["progress"]})
