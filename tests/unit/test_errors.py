"""OSErrors the user or the machine causes become one-line errors; other ones stay bugs."""

from __future__ import annotations

import errno
import os

from pvmlab.errors import StateError, from_os_error


def test_full_disk_names_the_file_and_the_fix() -> None:
    err = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/h/images/x"), "/h")
    assert isinstance(err, StateError) and err.exit_code == 1
    assert err.problem == "no space left writing /h/images/x (No space left on device)"
    assert err.hint is not None and "`df -h /h`" in err.hint


def test_a_write_that_does_not_say_its_file_names_the_home() -> None:
    err = from_os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "/h")
    assert err is not None
    assert err.problem == "no space left writing a file in /h (Disk quota exceeded)"


def test_read_only_and_permission() -> None:
    rofs = from_os_error(OSError(errno.EROFS, "Read-only file system", "/h/.lock"), "/h")
    assert rofs is not None and rofs.problem == "cannot write /h/.lock: read-only filesystem"
    denied = from_os_error(PermissionError(errno.EACCES, "Permission denied", "/h/.lock"), "/h")
    assert denied is not None and denied.problem == "permission denied: /h/.lock"
    assert denied.hint is not None
    if os.geteuid() == 0:
        assert denied.hint == "check the owner and mode of /h/.lock"
    else:
        assert "run pvmlab as root" in denied.hint


def test_other_os_errors_are_bugs() -> None:
    assert from_os_error(OSError(errno.EBADF, "Bad file descriptor"), "/h") is None
    assert from_os_error(FileNotFoundError(errno.ENOENT, "No such file", "/x"), "/h") is None
