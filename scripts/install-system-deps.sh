#!/usr/bin/env bash
# Install the Debian packages listed in scripts/system-packages.txt where the machine allows it
# (root and apt-get present). Everything in the product degrades gracefully without them, with a
# clear warning, so a machine that cannot install them still runs and tests what it can.
set -uo pipefail
list="$(dirname "$0")/system-packages.txt"
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' "$list" | awk '{print $1}')
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"; exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system packages missing (install them as root for full function): ${missing[*]}" >&2
  exit 0
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
  || echo "warning: some system packages could not be installed: ${missing[*]}" >&2
exit 0
