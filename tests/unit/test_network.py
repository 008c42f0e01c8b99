"""The privilege check of the lab network (no namespaces are made here)."""

from __future__ import annotations

import pytest

from pvmlab.errors import PrivilegeError
from pvmlab.network import privilege
from pvmlab.network.lab import require_net_admin

ROOT = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
NOBODY = "Name:\tpython\nCapEff:\t0000000000000000\n"
NET_ONLY = f"CapEff:\t{1 << 12:016x}\n"
BOTH = f"CapEff:\t{(1 << 12) | (1 << 21):016x}\n"


def test_effective_caps_parsed() -> None:
    assert privilege.effective_caps(ROOT) == 0x1FFFFFFFFFF
    assert privilege.effective_caps(NOBODY) == 0
    assert privilege.effective_caps("no such line") == 0


def test_root_passes_and_capabilities_are_what_count() -> None:
    require_net_admin(status=ROOT)
    require_net_admin(status=BOTH)  # a non-root process granted the capabilities


@pytest.mark.parametrize(
    ("status", "missing"),
    [(NOBODY, "CAP_NET_ADMIN, CAP_SYS_ADMIN"), (NET_ONLY, "CAP_SYS_ADMIN")],
)
def test_missing_capability_is_a_privilege_error(status: str, missing: str) -> None:
    with pytest.raises(PrivilegeError) as info:
        require_net_admin("starting the lab", status=status)
    assert "needs root or CAP_NET_ADMIN" in info.value.problem
    assert missing in info.value.problem
    assert info.value.hint is not None and "sudo" in info.value.hint


def test_this_process_as_root_passes() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("only meaningful as root")
    require_net_admin()
