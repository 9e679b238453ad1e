package io.mqvirtio.backend;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.ArrayList;
import java.util.List;

/**
 * A multiqueue TAP device (IFF_MULTI_QUEUE): one queue fd per queue pair, each carrying the 12-byte virtio-net
 * header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so frames pass between guest memory and the kernel with one
 * readv/writev and no copy. Offloads towards the guest follow the negotiated GUEST_* features (TUNSETOFFLOAD);
 * a pair whose rings are disabled has its queue detached (TUNSETQUEUE) so the kernel steers no flow to it.
 *
 * <p>An existing TAP device (e.g. {@code ip tuntap add NAME mode tap multi_queue}) is used as it is; a name that
 * does not exist yet is created, and disappears when its last queue closes.
 */
public final class TapBackend implements PacketBackend {
    private static final Logger LOG = System.getLogger(TapBackend.class.getName());

    private final String name;
    private final List<Tap> queues = new ArrayList<>();

    private TapBackend(String name) {
        this.name = name;
    }

    /** Opens {@code pairs} queues of TAP device {@code ifName}. */
    public static TapBackend open(String ifName, int pairs) {
        TapBackend b = new TapBackend(ifName);
        try {
            for (int i = 0; i < pairs; i++) {
                Tap q = Tap.openQueue(ifName, true);
                q.setVnetHdrSize(VirtioNet.HDR_SIZE);
                q.setNonBlocking(true);
                q.detach(); // attached when the guest enables the pair
                b.queues.add(q);
            }
        } catch (RuntimeException e) {
            b.close();
            throw e;
        }
        LOG.log(Level.INFO, "tap {0}: {1} queues opened", ifName, pairs);
        return b;
    }

    public String interfaceName() {
        return name;
    }

    @Override
    public int maxPairs() {
        return queues.size();
    }

    @Override
    public long features() {
        return VirtioFeatures.bit(VirtioNet.F_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM)
                | VirtioFeatures.bit(VirtioNet.F_HOST_TSO4) | VirtioFeatures.bit(VirtioNet.F_HOST_TSO6)
                | VirtioFeatures.bit(VirtioNet.F_HOST_ECN) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4)
                | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO6) | VirtioFeatures.bit(VirtioNet.F_GUEST_ECN);
    }

    /** TUNSETOFFLOAD flags for what the guest accepts (its GUEST_* features). */
    static int offloads(long f) {
        if (!VirtioFeatures.has(f, VirtioNet.F_GUEST_CSUM)) {
            return 0; // segmentation offloads need checksum offload
        }
        int o = Tap.TUN_F_CSUM;
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_TSO4)) {
            o |= Tap.TUN_F_TSO4;
        }
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_TSO6)) {
            o |= Tap.TUN_F_TSO6;
        }
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_ECN) && (o & (Tap.TUN_F_TSO4 | Tap.TUN_F_TSO6)) != 0) {
            o |= Tap.TUN_F_TSO_ECN;
        }
        return o;
    }

    @Override
    public Port open(int pair) {
        Tap q = queues.get(pair);
        return new Port() {
            private boolean attached;

            @Override
            public int readFd() {
                return q.fd();
            }

            @Override
            public long send(IoVec frame) {
                return IoVec.writev(q, frame);
            }

            @Override
            public long receive(IoVec into) {
                return IoVec.readv(q, into);
            }

            @Override
            public void setActive(boolean active) {
                if (active == attached) {
                    return;
                }
                if (active) {
                    q.attach();
                } else {
                    q.detach();
                }
                attached = active;
                LOG.log(Level.INFO, "tap {0}: queue {1} {2}", name, pair, active ? "attached" : "detached");
            }

            @Override
            public void setFeatures(long features) {
                q.setOffload(offloads(features));
            }

            @Override
            public void close() {
                // the queue fds belong to the backend and close with it
            }
        };
    }

    @Override
    public String describe() {
        return "tap " + name + " (" + queues.size() + " queues)";
    }

    @Override
    public void close() {
        queues.forEach(Tap::close);
        queues.clear();
    }
}
