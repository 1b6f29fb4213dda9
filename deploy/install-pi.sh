#!/usr/bin/env bash
# Installs the Dropline edge agent on Raspberry Pi OS (64-bit, Bookworm or later).
#   sudo deploy/install-pi.sh [path/to/dropline.whl or source directory]
# Then edit /etc/dropline/edge.toml and `sudo systemctl restart dropline-edge`.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)"; exit 1; }
source_dir="$(cd "$(dirname "$0")/.." && pwd)"
package="${1:-$source_dir}"

echo "== system packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# python3-lgpio / python3-rpi-lgpio: gpiozero's pin factories, built for this kernel;
# libzbar0: pyzbar; chromium: the kiosk screen.
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-lgpio python3-rpi-lgpio libzbar0 \
    libgl1 libglib2.0-0 chromium

echo "== user and directories"
id dropline >/dev/null 2>&1 || useradd --system --home /var/lib/dropline --shell /usr/sbin/nologin dropline
for group in gpio video lp dialout plugdev; do
    getent group "$group" >/dev/null && usermod -aG "$group" dropline
done
install -d -o dropline -g dropline -m 0750 /var/lib/dropline
install -d -m 0755 /etc/dropline

echo "== virtual environment in /opt/dropline/venv"
# --system-site-packages: the lgpio bindings come from Debian, matched to the kernel.
python3 -m venv --system-site-packages /opt/dropline/venv
/opt/dropline/venv/bin/pip install --quiet --upgrade pip
/opt/dropline/venv/bin/pip install --quiet "$package"

echo "== configuration and service"
if [ ! -f /etc/dropline/edge.toml ]; then
    install -m 0640 -g dropline "$source_dir/deploy/edge.example.toml" /etc/dropline/edge.toml
    echo "   wrote /etc/dropline/edge.toml: set store, device, broker and the pin map"
fi
install -m 0644 "$source_dir/deploy/dropline-edge.service" /etc/systemd/system/dropline-edge.service
systemctl daemon-reload
systemctl enable dropline-edge.service
systemctl restart dropline-edge.service

echo "== kiosk browser (desktop autostart of the kiosk user)"
kiosk_user="${KIOSK_USER:-${SUDO_USER:-pi}}"
if id "$kiosk_user" >/dev/null 2>&1; then
    home="$(getent passwd "$kiosk_user" | cut -d: -f6)"
    install -d -o "$kiosk_user" "$home/.config/labwc"
    autostart="$home/.config/labwc/autostart"
    line="chromium --kiosk --noerrdialogs --disable-infobars --no-first-run --incognito http://127.0.0.1:8088/ &"
    grep -qF "127.0.0.1:8088" "$autostart" 2>/dev/null || echo "$line" >> "$autostart"
    chown "$kiosk_user" "$autostart"
fi
systemctl --no-pager --lines=5 status dropline-edge.service || true
echo "done: journalctl -u dropline-edge -f shows the agent's log"
