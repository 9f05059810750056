# pyxen-managed: xend rewrites this file when pyxen is upgraded; delete this
# line to keep your own edits.
#
# Start of every vif-* script (sourced).  xend runs a vif script as
#   <script> online|offline [name=value ...]
# with these environment variables (Xen's scripts read the same names from
# xenstore; pyxen has no xenstore and passes them directly):
#   vif          the host-side interface (tap), vif<domid>.<devid> or vifname
#   domid devid  the domain and the vif's device id;  domname  its name
#   mac          the guest's MAC address
#   bridge ip vifname rate model   the vif's settings, when its config sets them
#   XENBUS_PATH  backend/vif/<domid>/<devid> (informational), XENBUS_TYPE=vif
#   type_if=vif

. "$(dirname "$0")/xen-network-common.sh"

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
online|offline|add|remove) ;;
*) fatal "Invalid command: '$command' (expected online or offline)" ;;
esac
eval_args "$@"
[ -n "${vif:-}" ] || fatal "vif (the host interface) is not set"
: "${ip:=}" "${mac:=}" "${domid:=0}" "${devid:=0}"

# nftables table that keeps the guest to its own addresses.
_nft_table() { echo "pyxen_$(echo "$vif" | tr -c 'A-Za-z0-9_\n' '_')"; }

# With ip= set, the guest may send IPv4 only from those addresses (plus a
# DHCP request) and answer ARP only for them; other IPv4, ARP and IPv6 is
# dropped where it enters the host, at the tap's ingress, so the rules hold
# whether the vif is bridged or routed.  Without ip= anything goes (Xen).
antispoof_on() {
	[ -n "$ip" ] || return 0
	command -v nft >/dev/null || fatal "nft (nftables) is needed to enforce ip=$ip on $vif"
	_t=$(_nft_table)
	_set=$(echo $ip | tr ' ' ',')
	nft -f - <<-NFT || fatal "cannot enforce ip=$ip on $vif (nftables)"
	table netdev $_t
	delete table netdev $_t
	table netdev $_t {
		chain ingress {
			type filter hook ingress device "$vif" priority 0; policy accept;
			meta protocol ip ip saddr { $_set } accept
			meta protocol ip udp sport 68 udp dport 67 accept
			meta protocol ip counter drop
			meta protocol arp arp saddr ip { $_set } accept
			meta protocol arp arp saddr ip 0.0.0.0 accept
			meta protocol arp counter drop
			meta protocol ip6 counter drop
		}
	}
	NFT
}

antispoof_off() {
	command -v nft >/dev/null || return 0
	nft delete table netdev "$(_nft_table)" 2>/dev/null
	return 0
}
