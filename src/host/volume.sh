#!/bin/sh
# sortie volume script: mount or unmount an attached EBS volume on the host. Embedded in the binary and sent
# through SSM. Usage: sh volume.sh mount VOLUME_ID ATTACH_DEVICE MOUNT_POINT | sh volume.sh unmount MOUNT_POINT
# Paths are prefixed with ${SORTIE_HOST_ROOT:-} (empty on a real host; a test sandbox otherwise).
set -eu
R=${SORTIE_HOST_ROOT:-}

# On Nitro instances the kernel names the disk nvmeXn1 and the volume id (without its dash) is the NVMe
# serial, which udev exposes under /dev/disk/by-id; on Xen instances /dev/sdf appears as /dev/xvdf.
find_device() {
	serial=$(printf '%s' "$1" | tr -d '-')
	for _ in $(seq 1 60); do
		for link in "$R/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$serial" \
			"$R/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}-ns-1"; do
			[ -e "$link" ] && { readlink -f "$link"; return 0; }
		done
		for dev in "$R$2" "$R$(printf '%s' "$2" | sed 's#/dev/sd#/dev/xvd#')"; do
			[ -b "$dev" ] && { printf '%s\n' "$dev"; return 0; }
		done
		sleep 1
	done
	echo "sortie-volume: volume $1 did not appear under $R/dev/disk/by-id or as $2 within 60 s" >&2
	return 1
}

do_mount() {
	vol=$1 attach=$2 mnt=$R$3
	dev=$(find_device "$vol" "$attach")
	# Never format a disk that already holds a filesystem: a kept volume comes back with its data.
	if ! blkid -p "$dev" >/dev/null 2>&1; then
		mkfs.ext4 -q -F -L sortie "$dev"
		echo "formatted $dev"
	fi
	mkdir -p "$mnt"
	if ! mountpoint -q "$mnt"; then
		mount "$dev" "$mnt"
	fi
	uuid=$(blkid -s UUID -o value "$dev")
	mkdir -p "$R/etc"
	touch "$R/etc/fstab"
	# nofail: a host whose volume is gone still boots (and its timer can still terminate it).
	grep -q "UUID=$uuid " "$R/etc/fstab" || printf 'UUID=%s %s ext4 defaults,nofail 0 2\n' "$uuid" "$3" >>"$R/etc/fstab"
	echo "volume_id=$vol"
	echo "device=$dev"
	echo "mount_path=$mnt"
}

do_unmount() {
	mnt=$R$1
	if mountpoint -q "$mnt"; then
		sync
		umount "$mnt" || umount -l "$mnt"
	fi
	[ ! -f "$R/etc/fstab" ] || { grep -v " $1 ext4 " "$R/etc/fstab" >"$R/etc/fstab.tmp" || :; mv -f "$R/etc/fstab.tmp" "$R/etc/fstab"; }
	echo "unmounted $mnt"
}

case ${1:-} in
mount) [ $# -eq 4 ] || { echo "usage: volume.sh mount VOLUME_ID DEVICE MOUNT" >&2; exit 64; }; do_mount "$2" "$3" "$4" ;;
unmount) [ $# -eq 2 ] || { echo "usage: volume.sh unmount MOUNT" >&2; exit 64; }; do_unmount "$2" ;;
*) echo "usage: volume.sh mount VOLUME_ID DEVICE MOUNT | unmount MOUNT" >&2; exit 64 ;;
esac
