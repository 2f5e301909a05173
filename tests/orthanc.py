"""A throwaway Orthanc PACS (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the tests and the
PACS benchmark: a plain process with its own config file, random loopback ports, a temporary
storage folder and authentication on, stopped by the process id it was started with."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from tests.browser import free_port

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "loupe", "pacs-test-password"


def orthanc_installed() -> bool:
    return ORTHANC.exists() and DICOMWEB_PLUGIN.exists()


class OrthancServer:
    """``with OrthancServer() as pacs:`` — ``pacs.dicomweb_url``, ``pacs.env()`` (Loupe's settings)."""

    def __init__(self, stable_age_s: int = 60) -> None:
        """``stable_age_s``: Orthanc's StableAge, after which a study without new instances is
        announced as ``StableStudy`` on its ``/changes`` feed (Orthanc's default is 60)."""
        self.stable_age_s = stable_age_s
        self.folder = Path(tempfile.mkdtemp(prefix="loupe-orthanc-"))
        self.http_port, self.dicom_port = free_port(), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def env(self) -> dict[str, str]:
        return {"LOUPE_DICOMWEB_URL": self.dicomweb_url, "LOUPE_DICOMWEB_USER": USER,
                "LOUPE_DICOMWEB_PASSWORD": PASSWORD}

    def start(self) -> OrthancServer:
        storage = self.folder / "storage"
        storage.mkdir()
        config = {
            "Name": "loupe-test-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "LOUPETEST",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True, "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "StableAge": self.stable_age_s,
        }
        config_file = self.folder / "orthanc.json"
        config_file.write_text(json.dumps(config))
        self.log = (self.folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen([str(ORTHANC), str(config_file)], cwd=self.folder, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=1).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)  # throwaway storage: no clean shutdown needed
            self.process.wait(timeout=10)
        self.process = None
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- seeding (STOW-RS, by dicomweb-client directly) and inspecting (Orthanc's REST API) --

    def seed(self, paths: list[Path]) -> None:
        import pydicom
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        client = DICOMwebClient(self.dicomweb_url, session=session)
        response = client.store_instances([pydicom.dcmread(path) for path in paths])
        if response.get("FailedSOPSequence"):  # Orthanc sends it empty when all went well
            raise RuntimeError(f"Orthanc refused seed files: {response.FailedSOPSequence}")

    def instance_count(self) -> int:
        return len(requests.get(f"{self.url}/instances", auth=(USER, PASSWORD), timeout=10).json())
