"""How supervise tells and prepares an oslo.service service (supervise/oslo_hosting.py). oslo's
backend is chosen once per process, so each case runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_other_services_load_nothing_of_oslo_service_and_are_not_taken_for_one():
    assert run(
        """
        import sys
        from supervise import hosted, oslo_hosting
        target = hosted.load(hosted.resolve("echo"))
        print(oslo_hosting.is_oslo_service(target), "oslo_service" in sys.modules)
        """
    ) == ["False", "False"]


def test_an_oslo_service_gets_the_threading_backend_whatever_it_imports_first():
    # The test service's module imports oslo.messaging before oslo.service: either asks
    # oslo.service for its backend, whose own default is eventlet.
    assert run(
        """
        from oslo_service import backend
        from supervise import hosted, oslo_hosting
        target = hosted.load(hosted.resolve("tests.functional.oslo_services:RPCService"))
        print(oslo_hosting.is_oslo_service(target), backend.get_backend_type().value)
        """
    ) == ["True", "threading"]


def test_a_service_that_chooses_its_backend_keeps_it():
    assert run(
        """
        import warnings
        warnings.simplefilter("ignore")
        from oslo_service import backend
        from supervise import hosted
        hosted.load(hosted.resolve("echo"))  # supervise's hook is registered first
        backend.init_backend(backend.BackendType.EVENTLET)  # what the service's module does
        from oslo_service import service
        print(backend.get_backend_type().value)
        """
    ) == ["eventlet"]
