#!/bin/sh
# Case 4's baseline: what a shell script would do, one exposure after the other:
# list the links once, then per exposure rsync (the workflow's flags), sha256sum -c,
# mv into the archive.
#   baseline.sh HOST SOURCE STAGING DESTINATION [SSH-COMMAND...]
# HOST "local" means SOURCE is on this machine (no ssh), as in the workflow.
set -eu
host=$1 source=$2 staging=$3 destination=$4
shift 4
ssh="$*"
if [ "$host" = local ]; then
    links=$(find "$source" -type l | sort)
else
    links=$($ssh "$host" find "$source" -type l | sort)
fi
for link in $links; do
    rel=${link#"$source"/}          # NIGHT/EXPID
    expid=${rel#*/}
    mkdir -p "$staging/$rel" "$destination/${rel%/*}"
    if [ "$host" = local ]; then
        rsync --recursive --copy-dirlinks --times --omit-dir-times "$link/" "$staging/$rel/"
    else
        rsync --recursive --copy-dirlinks --times --omit-dir-times -e "$ssh" \
            "$host:$link/" "$staging/$rel/"
    fi
    (cd "$staging/$rel" && sha256sum -c --quiet "checksum-$expid.sha256sum")
    mv "$staging/$rel" "$destination/$rel"
done
