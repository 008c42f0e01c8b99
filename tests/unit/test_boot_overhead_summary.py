"""bench.boot_overhead's arithmetic: the rotating order and each network way against direct.

The boots themselves run in ``python -m bench.boot_overhead`` (real QEMU, root); here only the
pure parts, on figures from a real run (docs/performance.md, "Boot overhead").
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # bench/ is run as `python -m bench...` from the repository
    sys.path.insert(0, str(REPO))

from bench import boot_overhead as bo


def test_order_rotates_so_no_way_always_boots_first() -> None:
    ways = ["direct", "pxe", "ipxe"]
    firsts = [bo._order(ways, i)[0] for i in range(3)]
    assert firsts == ["direct", "pxe", "ipxe"]
    assert all(sorted(bo._order(ways, i)) == sorted(ways) for i in range(5))
    assert bo._order(["direct", "pxe"], 1) == ["pxe", "direct"]


def tl(**durations: float) -> dict[str, object]:
    return {"phases": [{"name": k, "duration": v} for k, v in durations.items()]}


def test_summary_per_way() -> None:
    times = {
        "direct": [5.17, 5.03, 5.22],
        "pxe": [10.10, 9.57, 9.82],
        "ipxe": [5.58, 5.89, 5.93],
    }
    timelines = {
        "pxe": [tl(**{"firmware-dhcp": 3.93, "tftp": 0.18}), tl(**{"firmware-dhcp": 3.95})],
        "ipxe": [tl(**{"vm-start": 3.02}), tl(**{"vm-start": 2.90}), tl(**{"vm-start": 3.10})],
    }
    out = bo._summarise(times, timelines)  # type: ignore[arg-type]
    assert out["direct_median_s"] == 5.17
    assert out["pxe"]["median_s"] == 9.82
    assert out["pxe"]["difference_s"] == pytest.approx(4.65)
    assert out["pxe"]["target_met"] is False
    assert out["pxe"]["phase_medians_s"] == {"firmware-dhcp": 3.94, "tftp": 0.18}
    assert out["ipxe"]["median_s"] == 5.89
    assert out["ipxe"]["difference_s"] == pytest.approx(0.72)
    assert out["ipxe"]["ratio"] == pytest.approx(1.14)
    assert out["ipxe"]["target_met"] is True
    assert out["ipxe"]["phase_medians_s"] == {"vm-start": 3.02}
    assert out["ipxe"]["last_timeline"] == timelines["ipxe"][-1]


def test_modes() -> None:
    assert bo.MODES == {
        "pxe": ("pxe",),
        "ipxe": ("ipxe",),
        "http": ("http",),
        "both": ("pxe", "ipxe"),
        "pxe-http": ("pxe", "http"),
    }
    assert (bo._vm_name("aarch64", "http"), bo._boot_order("http")) == ("http-arm", "pxe")
    assert (bo._vm_name("x86_64"), bo._boot_order("ipxe")) == ("pxe-x86", "ipxe")
