package io.mqvirtio.bench;

import io.mqvirtio.net.NetDriver;
import io.mqvirtio.virtio.VirtioFeatures;
import java.util.ArrayList;
import java.util.List;

/**
 * A virtqueue layout (split or packed, VIRTIO_F_RING_PACKED) and whether VIRTIO_F_IN_ORDER is used: what
 * {@code mqvirtio bench} asks both sides of a scenario for, and what a connection negotiated. The two change what
 * both sides do per packet, so figures are compared only between points of the same mode.
 */
public record RingMode(boolean packed, boolean inOrder) {
    /** What the negotiated {@code features} choose. */
    public static RingMode of(long features) {
        return new RingMode(VirtioFeatures.has(features, VirtioFeatures.F_RING_PACKED),
                VirtioFeatures.has(features, VirtioFeatures.F_IN_ORDER));
    }

    /** Every combination of the layouts and IN_ORDER choices given, layout first, in the order given. */
    public static List<RingMode> grid(List<Boolean> packed, List<Boolean> inOrder) {
        List<RingMode> out = new ArrayList<>();
        for (boolean p : packed) {
            for (boolean o : inOrder) {
                out.add(new RingMode(p, o));
            }
        }
        return out;
    }

    /** "split", "split+inorder", "packed", "packed+inorder". */
    public String label() {
        return (packed ? "packed" : "split") + (inOrder ? "+inorder" : "");
    }

    /**
     * Our driver's features for this mode: everything it negotiates when offered, less the packed layout or
     * IN_ORDER where this mode has none (a driver offered a feature it wants takes it).
     */
    public long driverFeatures() {
        long f = NetDriver.WANTED_SPLIT | NetDriver.WANTED_ANY_ORDER;
        if (!packed) {
            f &= NetDriver.WANTED_SPLIT;
        }
        if (!inOrder) {
            f &= NetDriver.WANTED_ANY_ORDER;
        }
        return f;
    }

    /**
     * DPDK virtio-user's devargs for this mode, to append to its {@code --vdev}: both said explicitly, since its
     * defaults differ (packed_vq=0, in_order=1).
     */
    public String virtioUserDevargs() {
        return ",packed_vq=" + (packed ? 1 : 0) + ",in_order=" + (inOrder ? 1 : 0);
    }

    @Override
    public String toString() {
        return label();
    }
}
