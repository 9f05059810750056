"""Host-side storage for virtual block devices: the sharing guard, LVM helpers and qcow2
internal snapshots of images no QEMU has open."""
