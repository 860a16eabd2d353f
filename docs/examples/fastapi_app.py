"""
A FastAPI application that offloads work to the task server
(docs/clients). The client is made in the app's lifespan, in the event
loop that serves the requests, and closed with it.
"""

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel

from taskservice.aio import Client
from taskservice.errors import JobNotFound

SERVER = os.environ.get("TASKSERVICE_SERVER", "tcp:127.0.0.1:12345")


@asynccontextmanager
async def lifespan(app: FastAPI):
    app.state.tasks = Client(SERVER)
    yield
    await app.state.tasks.close()


app = FastAPI(lifespan=lifespan)


class Campaign(BaseModel):
    to: list[str]


@app.get("/fib/{n}")
async def fib(n: int, request: Request):
    # Awaiting does not block the loop; if the client goes away, the
    # request's task is cancelled, and so is the call.
    return {"result": await request.app.state.tasks.call("fib", n, timeout=10)}


@app.post("/campaigns", status_code=202)
async def start_campaign(campaign: Campaign, request: Request):
    job = await request.app.state.tasks.submit("send_mail", {"to": campaign.to})
    return {"job": job.id}


@app.get("/campaigns/{job_id}")
async def campaign(job_id: str, request: Request):
    try:
        job = await (await request.app.state.tasks.attach(job_id)).status()
    except JobNotFound:
        raise HTTPException(404, "no such campaign") from None
    return {"state": job["state"], "progress": job["progress"], "result": job["result"]}
