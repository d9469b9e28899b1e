#!/usr/bin/env bash
# Refresh the Swagger UI files that /docs serves from the package (src/apiinone/web/static/swagger-ui/),
# so the API reference pages work with no internet. Maintainers only: the files are committed, and
# nothing downloads them at run time. Needs npm; takes the version pinned below (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-5.35.0}
dest=src/apiinone/web/static/swagger-ui
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
rm -rf "$dest" && mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
  cp "$work/package/$f" "$dest/$f"
done
# the bundle names a source map that is not shipped: drop the reference, so no request 404s
sed -i '/^\/\/# sourceMappingURL=/d' "$dest/swagger-ui-bundle.js"
sed -i 's|/\*# sourceMappingURL=.*\*/||' "$dest/swagger-ui.css"
echo "swagger-ui-dist $version" > "$dest/VERSION"
echo "vendored swagger-ui-dist $version into $dest" >&2
