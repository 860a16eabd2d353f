"""
End to end, as a person uses it: ``twistd taskservice`` (a real subprocess:
task server, workers, gateway and SMTP sink) and its demo page in real
headless Chromium. One click sends 1,000 e-mails over real SMTP to the
sink, the progress bar moves and completes, the echo box answers while the
mail goes out, and the sink counts 1,000.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted

from tests.test_js_client import CHROMIUM, BrowserThread, _demo, browser
from tests.test_twistd import connectWhenListening, freePort, twistd

__all__ = ["browser"]  # the module-scoped fixture, shared

HOST = "127.0.0.1"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium)",
    ),
]


@pytest_twisted.ensureDeferred
async def test_thousandEmails(browser: BrowserThread, tmp_path: Path) -> None:
    """
    The demo page against the real service: "Send an e-mail to 1,000 users"
    runs send_mail in a worker, the progress bar reaches 1,000 / 1,000, the
    result is reported, the echo box answers during the send, the page's
    sink panel and the gateway's /stats both show the 1,000 messages the
    real SMTP sink received; Cancel stops a second send part-way. No error
    in the page's console.
    """
    wsPort, sinkPort = freePort(), freePort()
    with twistd(
        tmp_path,
        "--workers",
        "2",
        "--listen",
        f"tcp:{freePort()}:interface={HOST}",
        "--websocket",
        f"tcp:{wsPort}:interface={HOST}",
        "--smtp-sink",
        f"tcp:{sinkPort}:interface={HOST}",
    ) as server:
        connectWhenListening(server, wsPort).close()
        origin = f"http://{HOST}:{wsPort}"
        seen = await browser.run(_demo, browser, origin, tmp_path / "demo.png")
        with urllib.request.urlopen(origin + "/stats", timeout=10) as response:
            stats = json.load(response)
    assert seen["errors"] == []
    assert seen["status"] == "open"
    assert seen["echo"].startswith('"still responsive" in ')
    assert seen["outcomeAtEcho"] == "running", "the echo came back mid-send"
    assert seen["result"].startswith("Sent 1,000 e-mails in ")
    assert seen["progress"] == [1000, 1000]
    assert seen["progressText"] == "1,000 / 1,000"
    assert seen["cancelled"].startswith("Cancelled after ")
    received = stats["smtpSink"]["received"]
    assert 1050 <= received < 2000, "all of the first send, part of the second"
    assert stats["taskServer"]["restartsByCause"] == {"cancel": 1}
