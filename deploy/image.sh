#!/usr/bin/env bash
# make image: the switchyard OCI image, built by Debian's podman FROM scratch — nothing is
# pulled. The image holds the binary, exactly the shared libraries `ldd` names for it, a
# non-root user (65532), its config at /etc/switchyard/switchyard.yaml (the example config,
# admin API on all interfaces, state file on the volume) and the state volume
# /var/lib/switchyard. Usage: deploy/image.sh [BINARY] [TAG]
# (default target/release/switchyard, switchyard:dev). Prints the image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/switchyard}
TAG=${2:-switchyard:dev}
command -v podman >/dev/null || { echo "image: podman is missing (apt-get install podman)" >&2; exit 2; }
[ -x "$BIN" ] || { echo "image: $BIN is not built (make build)" >&2; exit 2; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/switchyard" "$root/state" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$BIN" "$root/usr/local/bin/switchyard"
# Debug symbols are for builds, not images (the test suite builds from a debug binary).
strip --strip-debug "$root/usr/local/bin/switchyard" 2>/dev/null || true
# The loader and libraries the binary links, at the paths it looks for them.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/switchyard:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
# The example config, as a container needs it: the admin API reachable by probes (set
# SWITCHYARD_ADMIN_TOKEN), the migration state on the volume.
sed -e 's|^  listen: 127.0.0.1:9090 .*|  listen: 0.0.0.0:9090               # probes reach it; set SWITCHYARD_ADMIN_TOKEN|' \
  config/switchyard.yaml > "$root/etc/switchyard/switchyard.yaml"
printf '\nstate_file: /var/lib/switchyard/state.json   # the volume: a rollback survives a restart\n' >> "$root/etc/switchyard/switchyard.yaml"

version=$("$BIN" --version | awk '{print $2}')
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
cat > "$ctx/Containerfile" <<CF
FROM scratch
COPY rootfs/usr /usr
COPY rootfs/lib /lib
COPY rootfs/etc /etc
COPY --chown=65532:65532 rootfs/state /var/lib/switchyard
COPY rootfs/tmp /tmp
$( [ -d "$root/lib64" ] && echo "COPY rootfs/lib64 /lib64" )
LABEL org.opencontainers.image.title="switchyard" \\
      org.opencontainers.image.description="Moves LLM API traffic from one provider to another in phases" \\
      org.opencontainers.image.source="https://github.com/switchyard/switchyard" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.revision="$revision" \\
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
VOLUME /var/lib/switchyard
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve", "--config", "/etc/switchyard/switchyard.yaml"]
CF
podman build --pull=never --quiet -t "$TAG" -f "$ctx/Containerfile" "$ctx" >/dev/null
size=$(podman image inspect "$TAG" --format '{{.Size}}')
echo "built $TAG: $(awk -v b="$size" 'BEGIN{printf "%.1f MB", b/1e6}') ($revision)"
