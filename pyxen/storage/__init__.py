"""Host-side storage for virtual block devices: the sharing guard and LVM helpers."""
