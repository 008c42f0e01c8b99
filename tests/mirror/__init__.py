"""Test fixtures for boot assets: disk images in real distro layouts and a local HTTP mirror."""
