package io.mqvirtio.net;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The Internet checksum (RFC 1071) as virtio-net's checksum offload uses it: VIRTIO_NET_HDR_F_NEEDS_CSUM asks for
 * the ones' complement sum of the bytes from {@code csum_start} to the end of the frame (whose checksum field already
 * holds the pseudo-header's partial sum), stored at {@code csum_start + csum_offset} (VIRTIO 1.3, 5.1.6.2).
 */
public final class Checksum {
    private static final ValueLayout.OfShort BE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private Checksum() {}

    /** Completes a partial checksum in {@code frame[0, len)}; false if start/offset do not fit the frame. */
    public static boolean complete(MemorySegment frame, long len, int start, int offset) {
        if (start < 0 || offset < 0 || (long) start + offset + 2 > len || len > frame.byteSize()) {
            return false;
        }
        long sum = sum(frame, start, len - start);
        frame.set(BE16, start + offset, (short) ~fold(sum));
        return true;
    }

    /** The 32-bit (unfolded) ones' complement sum of {@code n} bytes from {@code at}, as big-endian 16-bit words. */
    public static long sum(MemorySegment s, long at, long n) {
        long sum = 0;
        long i = 0;
        for (; i + 1 < n; i += 2) {
            sum += Short.toUnsignedInt(s.get(BE16, at + i));
        }
        if (i < n) {
            sum += (s.get(ValueLayout.JAVA_BYTE, at + i) & 0xff) << 8;
        }
        return sum;
    }

    /** Folds a sum to 16 bits. */
    public static int fold(long sum) {
        while ((sum >>> 16) != 0) {
            sum = (sum & 0xffff) + (sum >>> 16);
        }
        return (int) sum;
    }
}
