"""The lab network: where the provisioner and the targets meet.

On Linux the provisioner is the lab's own network namespace on the host (``lab``): a bridge that
holds the provisioner address, and one tap per target VM enslaved to it. Every object is named
from the lab home, so two homes never clash. Other backends (a provisioner VM, macOS vmnet) are
meant to live beside ``lab`` in this package, behind the same functions.
"""
