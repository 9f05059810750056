# pyxen-managed: xend rewrites this file when pyxen is upgraded; delete this
# line to keep your own edits.
#
# Helpers shared by pyxen's network-* and vif-* scripts (sourced, not run).
#
# Contract with xend (see README.md, "Network scripts"):
#   network-<kind> start|stop|status [name=value ...]
#   vif-<kind> online|offline [name=value ...]
# name=value arguments come from xend-config.sxp, e.g.
#   (network-script 'network-bridge netdev=eth0 bridge=xenbr0').
# xend also exports PYXEN_ROOT, PYXEN_RUN (a run directory for the scripts'
# own state) and XEN_SCRIPT_DIR.  Exit status 0 means success; otherwise
# the last line written to stderr is the error xend reports.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
PYXEN_RUN=${PYXEN_RUN:-/var/run/pyxen/net}
SELF=${0##*/}

log() { echo "$SELF: $*" >&2; }
fatal() { echo "$SELF: $*" >&2; exit 1; }

# name=value arguments set shell variables, but only those the environment
# did not already set: xend exports a vif's own settings (its config entry)
# there, and those win over the host-wide defaults given as arguments.
eval_args() {
	for _arg; do
		case "$_arg" in
		[A-Za-z_]*=*)
			_k=${_arg%%=*}
			case "$_k" in *[!A-Za-z0-9_]*) fatal "bad argument $_arg" ;; esac
			eval "_cur=\${$_k-}"
			[ -n "$_cur" ] || eval "$_k=\${_arg#*=}"
			;;
		esac
	done
}

# The interface the default route leaves by (empty if there is none).
default_dev() {
	ip -4 route show default 2>/dev/null |
		awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

# First IPv4 address of interface $1 (without its prefix length).
ip_of() {
	ip -4 -o addr show dev "$1" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'
}

is_bridge() { [ -d "/sys/class/net/$1/bridge" ]; }

# sysctl_set <path under /proc/sys> <value>: a path, not dotted, because
# interface names (vif1.0) contain dots.
sysctl_set() { echo "$2" >"/proc/sys/$1" 2>/dev/null; }

mkdir -p "$PYXEN_RUN" 2>/dev/null
