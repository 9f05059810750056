# Kernel command line helpers, sourced by /init and the rc scripts.

# Value of a "key=value" kernel parameter ($1 = key); status 1 when absent.
karg() {
	for _a in $(cat /proc/cmdline); do
		case "$_a" in "$1="*) echo "${_a#*=}"; return 0 ;; esac
	done
	return 1
}

# True when the bare flag $1 is on the kernel command line.
kflag() {
	case " $(cat /proc/cmdline) " in *" $1 "*) return 0 ;; esac
	return 1
}
