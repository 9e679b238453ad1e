package io.mqvirtio.capture;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/**
 * The pcapng blocks a capture file needs, little-endian (the IETF's pcapng draft, draft-ietf-opsawg-pcapng): a
 * Section Header Block, one Interface Description Block (Ethernet, nanosecond timestamps) and Enhanced Packet Blocks
 * whose {@code epb_flags} say the direction. Wireshark, tshark and tcpdump read them.
 */
public final class Pcapng {
    static final int SHB = 0x0A0D0D0A;
    static final int IDB = 0x00000001;
    static final int EPB = 0x00000006;
    static final int BYTE_ORDER_MAGIC = 0x1A2B3C4D;
    static final int LINKTYPE_ETHERNET = 1;
    private static final short OPT_END = 0;
    private static final short SHB_USERAPPL = 4;
    private static final short IF_NAME = 2;
    private static final short IF_DESCRIPTION = 3;
    private static final short IF_TSRESOL = 9;
    private static final short EPB_FLAGS = 2;
    /** epb_flags bits 0-1: the frame came in to the interface, or went out of it. */
    public static final int INBOUND = 1;
    public static final int OUTBOUND = 2;
    /** Every block is at most this big: an EPB of the largest snap length and its options. */
    static final int MAX_SNAPLEN = 262_144;

    private Pcapng() {}

    static byte[] sectionHeader(String application) {
        byte[] app = application.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = block(SHB, 16 + option(app.length) + 4);
        b.putInt(BYTE_ORDER_MAGIC).putShort((short) 1).putShort((short) 0).putLong(-1L); // section length unknown
        option(b, SHB_USERAPPL, app);
        return finish(b);
    }

    static byte[] interfaceDescription(String name, String description, int snaplen) {
        byte[] n = name.getBytes(StandardCharsets.UTF_8);
        byte[] d = description.getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = block(IDB, 8 + option(n.length) + option(d.length) + option(1) + 4);
        b.putShort((short) LINKTYPE_ETHERNET).putShort((short) 0).putInt(snaplen);
        option(b, IF_NAME, n);
        option(b, IF_DESCRIPTION, d);
        option(b, IF_TSRESOL, new byte[] {9}); // 10^-9 s
        return finish(b);
    }

    /** The EPB's size for {@code captured} bytes of data. */
    static int packetBlockSize(int captured) {
        return 8 + 20 + pad(captured) + 8 + 4 + 4; // type, length; fixed fields; data; epb_flags; end; length
    }

    /** Writes one Enhanced Packet Block for interface 0 into {@code out} (which has {@link #packetBlockSize} left). */
    static void enhancedPacket(ByteBuffer out, long timestampNanos, byte[] data, int captured, int original, int flags) {
        int size = packetBlockSize(captured);
        int start = out.position();
        out.putInt(EPB).putInt(size);
        out.putInt(0); // interface 0
        out.putInt((int) (timestampNanos >>> 32)).putInt((int) timestampNanos);
        out.putInt(captured).putInt(original);
        out.put(data, 0, captured);
        for (int i = captured; i < pad(captured); i++) {
            out.put((byte) 0);
        }
        out.putShort(EPB_FLAGS).putShort((short) 4).putInt(flags);
        out.putShort(OPT_END).putShort((short) 0);
        out.putInt(size);
        assert out.position() - start == size;
    }

    static int pad(int n) {
        return (n + 3) & ~3;
    }

    private static int option(int length) {
        return 4 + pad(length);
    }

    private static void option(ByteBuffer b, short code, byte[] value) {
        b.putShort(code).putShort((short) value.length).put(value);
        for (int i = value.length; i < pad(value.length); i++) {
            b.put((byte) 0);
        }
    }

    private static ByteBuffer block(int type, int body) {
        int total = 8 + body + 4;
        ByteBuffer b = ByteBuffer.allocate(total).order(ByteOrder.LITTLE_ENDIAN);
        return b.putInt(type).putInt(total);
    }

    /** Ends the options, writes the trailing length. */
    private static byte[] finish(ByteBuffer b) {
        b.putShort(OPT_END).putShort((short) 0);
        b.putInt(b.capacity());
        assert b.position() == b.capacity();
        return b.array();
    }
}
