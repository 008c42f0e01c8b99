"""pvmlab: a local network-boot lab.

Data flows through the subpackages in this order:

    spec     what the user asked for (lab, VMs, distros), validated at the edge
    network  the lab's network namespace, bridge and taps
    stack    the provisioner: dnsmasq (DHCP + TFTP) and the HTTP/iPXE server, supervised
    qemu     firmware discovery, accelerator choice, QEMU argv, QMP
    observe  what the boot did: console, dnsmasq and HTTP logs

`cli` wires them to commands; `assets` holds boot files (kernels, initrds, iPXE binaries).
"""

__version__ = "0.1.0"
