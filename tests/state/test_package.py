"""The public surface of router.state, and Redis as an optional dependency."""

from __future__ import annotations

import subprocess
import sys

import router.state
from tests.support.processes import ROOT

EXPORTED = {
    "Admissions", "Admitted", "BudgetExceeded", "BudgetScope", "BudgetStore", "BudgetUsage", "KeyLimits", "KeyRecord",
    "KeyStore", "KeyValueStore", "MemoryState", "RateDecision", "RateLimiter", "RateScope", "RedisState",
    "Reservation", "SQLiteState", "StateStore", "Window", "open_store",
}  # fmt: skip


def test_the_public_surface_is_what_is_documented() -> None:
    assert set(router.state.__all__) == EXPORTED
    assert all(hasattr(router.state, name) for name in EXPORTED)


def test_without_the_redis_package_everything_imports_and_redis_says_how_to_install_it() -> None:
    # sys.modules["redis"] = None makes `import redis` fail, as on an install without the extra.
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from router.state import open_store\n"
        "open_store('sqlite:///unused.db'); open_store('memory://')\n"
        "try:\n"
        "    open_store('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "pip install 'hybrid-router[redis]'" in result.stdout
