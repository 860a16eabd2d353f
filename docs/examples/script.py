"""
A plain script that hands work to the task server (docs/clients): a call,
a call with progress, and a durable job.
"""

import os

from taskservice.errors import TaskFailed
from taskservice.sync import Client

SERVER = os.environ.get("TASKSERVICE_SERVER", "tcp:127.0.0.1:12345")


def main() -> None:
    with Client(SERVER) as client:
        print("fib(30) =", client.call("fib", 30))

        def show(update: dict) -> None:
            print(f"sent {update['done']} of {update['total']}")

        print(
            client.call(
                "send_mail", to=["a@example.com", "b@example.com"], on_progress=show
            )
        )

        try:
            client.call("fail", "no such user")
        except TaskFailed as e:
            print("failed:", e.remoteType, e.remoteMessage)

        job = client.submit("send_mail", {"to": ["c@example.com"]})
        print("job", job.id, "->", job.result(timeout=60))


if __name__ == "__main__":
    main()
