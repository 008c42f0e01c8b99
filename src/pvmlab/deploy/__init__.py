"""Image deployment: a VM's disk written from a prepared image by a deploy ramdisk the lab
network-boots (``ramdisk``), the image, its instructions and seed as the lab serves them, and
the deploy's status (``state``)."""
