package io.mqvirtio.virtio;

/**
 * Where a ring stands, as vhost-user's SET_VRING_BASE and GET_VRING_BASE carry it: the next available entry the
 * device will read and the next used entry it will write, each with its wrap counter (packed rings only). Encoded
 * and decoded here, in one place (vhost-user.rst, "Vring descriptor indices"):
 *
 * <ul>
 *   <li>split: bits 0-15 the next avail index (free-running, not wrapped by the ring size); bits 16-31 zero. The used
 *       index is not carried: the ring's own {@code used.idx} says it.</li>
 *   <li>packed: bits 0-14 the next available descriptor's index in the ring, bit 15 its wrap counter; bits 16-30
 *       the next used descriptor's index, bit 31 its wrap counter.</li>
 * </ul>
 */
public record RingBase(int avail, boolean availWrap, int used, boolean usedWrap) {
    /** A split ring's base: the next avail index (16 bits), the used index as the ring says. */
    public static RingBase split(int avail, int used) {
        return new RingBase(avail & 0xffff, false, used & 0xffff, false);
    }

    /** The start of a packed ring: everything at 0, both wrap counters 1 (VIRTIO 1.3, 2.8.1). */
    public static final RingBase PACKED_START = new RingBase(0, true, 0, true);

    /**
     * Decodes SET_VRING_BASE's number for a ring of {@code size} entries.
     *
     * @throws VirtqueueException for bits a split base does not have, or a packed index beyond the ring
     */
    public static RingBase decode(long num, boolean packed, int size) {
        if (num < 0 || num > 0xffff_ffffL) {
            throw new VirtqueueException("ring base " + Long.toUnsignedString(num) + " is not a 32-bit number");
        }
        if (!packed) {
            if (num > 0xffff) {
                throw new VirtqueueException("ring base " + num + " does not fit a split ring's 16 bits");
            }
            return split((int) num, 0);
        }
        int avail = (int) (num & 0x7fff);
        int used = (int) ((num >>> 16) & 0x7fff);
        if (avail >= size || used >= size) {
            throw new VirtqueueException("packed ring base 0x" + Long.toHexString(num) + ": index " + Math.max(avail, used)
                    + " is beyond the ring's " + size + " descriptors");
        }
        return new RingBase(avail, (num & 0x8000) != 0, used, (num & 0x8000_0000L) != 0);
    }

    /** The number GET_VRING_BASE answers. */
    public int encode(boolean packed) {
        if (!packed) {
            return avail & 0xffff;
        }
        return (avail & 0x7fff) | (availWrap ? 0x8000 : 0) | (used & 0x7fff) << 16 | (usedWrap ? 0x8000_0000 : 0);
    }
}
