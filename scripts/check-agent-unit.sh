#!/bin/sh
# Checks that the systemd unit embedded in assets/install.sh, rendered with the
# default paths, is byte-for-byte dist/systemd/restic-manager-agent.service,
# and that install.sh parses as POSIX sh (plus shellcheck when installed).
set -eu
cd "$(dirname "$0")/.."

sh -n assets/install.sh
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck -s sh assets/install.sh scripts/vendor-assets.sh scripts/check-agent-unit.sh
else
  echo "shellcheck not installed; skipped it (sh -n passed)"
fi

rendered=$(mktemp)
trap 'rm -f "$rendered" "$rendered.fn"' EXIT
# Load only the agent_unit function from install.sh (running the script would install).
sed -n '/^agent_unit() {$/,/^}$/p' assets/install.sh >"$rendered.fn"
[ -s "$rendered.fn" ] || { echo "agent_unit() not found in assets/install.sh" >&2; exit 1; }
# shellcheck disable=SC1090
. "$rendered.fn"
rm -f "$rendered.fn"
agent_unit /usr/local/bin/restic-manager-agent /etc/restic-manager-agent/config.toml >"$rendered"

if ! diff -u dist/systemd/restic-manager-agent.service "$rendered"; then
  echo "assets/install.sh's unit differs from dist/systemd/restic-manager-agent.service (diff above); keep them in step" >&2
  exit 1
fi
# restic must read every file and restore anywhere: no sandboxing that makes
# part of the file system read-only, private, hidden or device-less.
for setting in ProtectSystem ProtectHome PrivateTmp ProtectKernelModules \
  RestrictSUIDSGID PrivateDevices DevicePolicy DeviceAllow ReadOnlyPaths \
  InaccessiblePaths TemporaryFileSystem ProtectProc ProtectClock ProtectKernelLogs; do
  if grep -q "^$setting=" dist/systemd/restic-manager-agent.service; then
    echo "dist/systemd/restic-manager-agent.service sets $setting=, which keeps restic from reading or restoring files" >&2
    exit 1
  fi
done
echo "install.sh: syntax ok; embedded unit matches dist/systemd/restic-manager-agent.service"
