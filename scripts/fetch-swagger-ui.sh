#!/usr/bin/env bash
# Installs the Swagger UI assets served at /docs into vendor/swagger-ui/, from
# the npm package swagger-ui-dist (no CDN at run time). Idempotent.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
VERSION="${SWAGGER_UI_VERSION:-5.35.0}"
DEST="$REPO_ROOT/vendor/swagger-ui"
if [ "$(cat "$DEST/.complete" 2>/dev/null)" = "$VERSION" ]; then
  log "Swagger UI $VERSION already in $DEST"
  exit 0
fi
command -v npm >/dev/null || die "npm is needed to fetch swagger-ui-dist (apt-get install npm)"
tarball="$DOWNLOADS/swagger-ui-dist-$VERSION.tgz"
if [ ! -f "$tarball" ]; then
  log "downloading swagger-ui-dist@$VERSION from the npm registry"
  (cd "$DOWNLOADS" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
tar -xzf "$tarball" -C "$tmp"
mkdir -p "$DEST"
rm -f "$DEST/.complete"
for f in swagger-ui.css swagger-ui-bundle.js swagger-ui-standalone-preset.js favicon-32x32.png LICENSE; do
  cp "$tmp/package/$f" "$DEST/$f"
done
echo "$VERSION" > "$DEST/.complete"
log "Swagger UI $VERSION installed in $DEST"
