"""Spot interruption notices from the instance metadata service (IMDSv2), polled in a thread.

AWS: "PUT /latest/api/token" with header X-aws-ec2-metadata-token-ttl-seconds returns a token; then
"GET /latest/meta-data/spot/instance-action" with header X-aws-ec2-metadata-token returns 404 when no interruption
is scheduled, or 200 with {"action": "terminate"|"stop"|"hibernate", "time": "2017-09-18T08:22:00Z"} about two
minutes before it (EC2 User Guide, "Spot Instance interruption notices"). The base URL is a flag/env
(SORTIE_IMDS_URL) so a test can serve these two paths.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request

from common import log

DEFAULT_IMDS = "http://169.254.169.254"


class SpotWatcher:
    def __init__(self, base_url: str | None = None, interval: float = 5.0):
        self.base = (base_url or os.environ.get("SORTIE_IMDS_URL") or DEFAULT_IMDS).rstrip("/")
        self.interval = interval
        self.notice: dict | None = None
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def interrupted(self) -> bool:
        return self._event.is_set()

    def start(self) -> SpotWatcher:
        if self.interval > 0:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> dict | None:
        req = urllib.request.Request(self.base + "/latest/api/token", method="PUT",
                                     headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        with urllib.request.urlopen(req, timeout=2) as resp:
            token = resp.read().decode()
        req = urllib.request.Request(self.base + "/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": token})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                notice = self.check_once()
                failures = 0
            except (OSError, ValueError) as err:
                failures += 1
                if failures == 3:
                    log(f"[spot] metadata service at {self.base} unreachable ({err}); no spot notices")
                    return
                notice = None
            if notice is not None:
                self.notice = notice
                log(f"[spot] interruption notice: {json.dumps(notice)}; saving a checkpoint and stopping")
                self._event.set()
                return
            self._stop.wait(self.interval)
