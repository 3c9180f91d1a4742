# Starts a sentinel monitoring the current leader.    env: POD_NAME
#
# A sentinel keeps its state in a file it rewrites; here that file is on an emptyDir and is
# written afresh on each start from sentinel.conf, with the leader that the other sentinels
# (or, if none answers, the data nodes) name now instead of redis-leader-0, so a restarted
# sentinel never monitors a demoted leader. The sentinel's id is derived from the pod name:
# a restarted sentinel is the same sentinel to its peers, never a fourth one that would
# raise the majority a failover needs.
set -u
here=$(dirname "$0")
. "$here/discover.sh"

self=$(address_of "$POD_NAME" $SENTINELS) || exit 1
leader=$(current_leader "$self")
[ -n "$leader" ] || leader=$INITIAL_LEADER
# With resolve-hostnames a sentinel exits if the leader's name does not resolve yet (its
# pod not yet created); wait here instead of crash-looping into kubelet's back-off.
until getent hosts "$leader" >/dev/null; do
    echo "redis-ha: waiting for $leader to resolve" >&2
    sleep 1
done

conf="${SENTINEL_DIR:-/data}/sentinel.conf"
awk -v leader="$leader" '$1 == "sentinel" && $2 == "monitor" { $4 = leader } { print }' \
    "$here/sentinel.conf" >"$conf" || exit 1
{
    echo "sentinel announce-ip $self"
    echo "sentinel myid $(printf '%s' "$POD_NAME" | sha1sum | cut -c1-40)"
} >>"$conf"
echo "redis-ha: starting sentinel $self monitoring $leader" >&2
exec valkey-server "$conf" --sentinel
