# Starts a data node (the leader or a follower) in the role the sentinels give it now.
#   sh redis.sh [valkey-server options...]     env: POD_NAME, ROLE (the pod's role label)
#
# The role label says how a pod started; after a failover the leader may be a follower
# pod. So on every start:
#   - the sentinels name another node: follow it (an old leader's data is replaced by the
#     new leader's, never served as the truth);
#   - they name this pod and it is the `leader` pod: lead, from the append-only file on its
#     claim (fsynced before every reply, so nothing it acknowledged is missing);
#   - they name this pod and it is a follower pod: its data did not survive (emptyDir, no
#     append-only file), and leading with nothing would make every follower sync an empty
#     data set. Wait, not listening, until the sentinels see it down and promote a node
#     that has the data, then follow that one;
#   - nobody answers (a new installation): the static roles, redis-leader-0 leads.
set -u
here=$(dirname "$0")
. "$here/discover.sh"

self=$(address_of "$POD_NAME" $NODES) || exit 1
leader=$(current_leader "$self")
if [ "$leader" = "$self" ] && [ "$ROLE" != leader ]; then
    echo "redis-ha: the sentinels name $self, a follower whose data is gone; waiting for them to promote another node" >&2
    while [ "$leader" = "$self" ]; do
        sleep 1
        leader=$(current_leader "$self")
    done
fi
if [ -z "$leader" ]; then
    if [ "$ROLE" = leader ]; then leader=$self; else leader=$INITIAL_LEADER; fi
fi

set -- "$here/redis.conf" "$@" --replica-announce-ip "$self"
if [ "$leader" = "$self" ]; then
    echo "redis-ha: starting $self as the leader" >&2
else
    echo "redis-ha: starting $self as a follower of $leader" >&2
    set -- "$@" --replicaof "$leader" 6379
fi
exec valkey-server "$@"
