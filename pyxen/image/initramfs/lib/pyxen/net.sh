# Network set-up from the kernel "ip=" parameter (the form xm builds from a
# domain config's ip/netmask/gateway/hostname/dhcp settings):
#   ip=<client>:<server>:<gw>:<netmask>:<host>:<dev>:<autoconf>[:<dns0>:<dns1>]
#   ip=dhcp | ip=off
# The kernel itself has no IP autoconfiguration, so this is ours to do.

# net_from_ip <ip= value>
net_from_ip() {
	_spec=$1
	case "$_spec" in
	''|off|none) return 0 ;;
	dhcp|on|any|both|bootp) _spec="::::::dhcp" ;;
	esac
	_old_ifs=$IFS
	IFS=:
	# shellcheck disable=SC2086
	set -- $_spec
	IFS=$_old_ifs
	_client=$1 _gw=$3 _mask=$4 _host=$5 _dev=$6 _auto=$7 _dns0=$8 _dns1=$9

	[ -n "$_host" ] && [ "$(hostname)" = pyxen ] && hostname "$_host"
	if [ -z "$_dev" ]; then
		# First ethernet-type interface, like the kernel would pick.
		for _d in /sys/class/net/*; do
			[ "$(cat "$_d/type" 2>/dev/null)" = 1 ] || continue
			_dev=${_d##*/}
			break
		done
	fi
	if [ -z "$_dev" ] || [ ! -e "/sys/class/net/$_dev" ]; then
		echo "pyxen: ip=: no network interface ${_dev}"
		return 1
	fi

	case "$_auto" in
	dhcp|on|any|both|bootp)
		if [ -z "$_client" ] || [ "$_client" = 0.0.0.0 ]; then
			# -b: do not hold up the boot for long when no server answers;
			# -A 1: but keep asking every few seconds from the background
			# (udhcpc's default pause is 20 s, so a DHCP server that came up
			# a moment after the guest gave it an address only ~20 s late).
			udhcpc -i "$_dev" -b -t 3 -T 1 -A 1 -s /etc/udhcpc/default.script \
				-p "/run/udhcpc.$_dev.pid" ${_host:+-x hostname:$_host} \
				>/dev/null 2>&1
			return 0
		fi
		;;
	esac

	[ -n "$_client" ] || { ip link set "$_dev" up; return 0; }
	if [ -n "$_mask" ]; then
		ifconfig "$_dev" "$_client" netmask "$_mask" up
	else
		ifconfig "$_dev" "$_client" up
	fi
	[ -n "$_gw" ] && [ "$_gw" != 0.0.0.0 ] && route add default gw "$_gw" dev "$_dev"
	if [ -n "$_dns0$_dns1" ]; then
		{
			[ -n "$_dns0" ] && echo "nameserver $_dns0"
			[ -n "$_dns1" ] && echo "nameserver $_dns1"
		} >/etc/resolv.conf 2>/dev/null
	fi
	return 0
}
