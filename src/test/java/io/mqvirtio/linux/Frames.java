package io.mqvirtio.linux;

import java.nio.ByteBuffer;

/**
 * Just enough Ethernet, ARP (RFC 826), IPv4 (RFC 791) and UDP (RFC 768) to talk to the kernel through a TAP in
 * tests: builders for the frames we send and readers for the fields we check. Big-endian, as on the wire.
 */
final class Frames {
    static final int ETH_HLEN = 14, ETH_P_IP = 0x0800, ETH_P_ARP = 0x0806, ARP_REQUEST = 1, ARP_REPLY = 2,
            IPPROTO_UDP = 17, IPV4_HLEN = 20, UDP_HLEN = 8;
    static final byte[] BROADCAST = {-1, -1, -1, -1, -1, -1};

    private Frames() {}

    static byte[] mac(int last) {
        return new byte[] {0x02, 0, 0, 0, 0x07, (byte) last}; // locally administered
    }

    static byte[] ip(int a, int b, int c, int d) {
        return new byte[] {(byte) a, (byte) b, (byte) c, (byte) d};
    }

    static byte[] arp(int op, byte[] senderMac, byte[] senderIp, byte[] targetMac, byte[] targetIp) {
        ByteBuffer b = ByteBuffer.allocate(ETH_HLEN + 28);
        b.put(op == ARP_REQUEST ? BROADCAST : targetMac).put(senderMac).putShort((short) ETH_P_ARP);
        b.putShort((short) 1).putShort((short) ETH_P_IP).put((byte) 6).put((byte) 4).putShort((short) op);
        b.put(senderMac).put(senderIp).put(op == ARP_REQUEST ? new byte[6] : targetMac).put(targetIp);
        return b.array();
    }

    /** An IPv4 UDP datagram in an Ethernet frame; UDP checksum 0 means "none", which IPv4 allows. */
    static byte[] udp(byte[] srcMac, byte[] dstMac, byte[] srcIp, byte[] dstIp, int srcPort, int dstPort,
            byte[] payload) {
        ByteBuffer b = ByteBuffer.allocate(ETH_HLEN + IPV4_HLEN + UDP_HLEN + payload.length);
        b.put(dstMac).put(srcMac).putShort((short) ETH_P_IP);
        int ipAt = b.position();
        b.put((byte) 0x45).put((byte) 0).putShort((short) (IPV4_HLEN + UDP_HLEN + payload.length));
        b.putShort((short) 1).putShort((short) 0x4000).put((byte) 64).put((byte) IPPROTO_UDP).putShort((short) 0);
        b.put(srcIp).put(dstIp);
        b.putShort(ipAt + 10, (short) checksum(b.array(), ipAt, IPV4_HLEN));
        b.putShort((short) srcPort).putShort((short) dstPort).putShort((short) (UDP_HLEN + payload.length))
                .putShort((short) 0).put(payload);
        return b.array();
    }

    /** The Internet checksum (RFC 1071) of {@code len} bytes from {@code off}. */
    static int checksum(byte[] d, int off, int len) {
        int sum = 0;
        for (int i = 0; i < len; i += 2) {
            sum += ((d[off + i] & 0xff) << 8) | (i + 1 < len ? d[off + i + 1] & 0xff : 0);
        }
        while ((sum >>> 16) != 0) {
            sum = (sum & 0xffff) + (sum >>> 16);
        }
        return ~sum & 0xffff;
    }

    static int etherType(byte[] f) {
        return u16(f, 12);
    }

    static byte[] srcMac(byte[] f) {
        return slice(f, 6, 6);
    }

    static byte[] dstMac(byte[] f) {
        return slice(f, 0, 6);
    }

    static boolean isArp(byte[] f, int op) {
        return f.length >= ETH_HLEN + 28 && etherType(f) == ETH_P_ARP && u16(f, ETH_HLEN + 6) == op;
    }

    static byte[] arpSenderMac(byte[] f) {
        return slice(f, ETH_HLEN + 8, 6);
    }

    static byte[] arpSenderIp(byte[] f) {
        return slice(f, ETH_HLEN + 14, 4);
    }

    static byte[] arpTargetMac(byte[] f) {
        return slice(f, ETH_HLEN + 18, 6);
    }

    static byte[] arpTargetIp(byte[] f) {
        return slice(f, ETH_HLEN + 24, 4);
    }

    static boolean isUdp(byte[] f) {
        return f.length >= ETH_HLEN + IPV4_HLEN + UDP_HLEN && etherType(f) == ETH_P_IP
                && (f[ETH_HLEN] & 0xff) == 0x45 && (f[ETH_HLEN + 9] & 0xff) == IPPROTO_UDP;
    }

    static byte[] ipSrc(byte[] f) {
        return slice(f, ETH_HLEN + 12, 4);
    }

    static byte[] ipDst(byte[] f) {
        return slice(f, ETH_HLEN + 16, 4);
    }

    static int udpSrcPort(byte[] f) {
        return u16(f, ETH_HLEN + IPV4_HLEN);
    }

    static int udpDstPort(byte[] f) {
        return u16(f, ETH_HLEN + IPV4_HLEN + 2);
    }

    static byte[] udpPayload(byte[] f) {
        int len = u16(f, ETH_HLEN + IPV4_HLEN + 4) - UDP_HLEN;
        return slice(f, ETH_HLEN + IPV4_HLEN + UDP_HLEN, len);
    }

    private static int u16(byte[] f, int at) {
        return ((f[at] & 0xff) << 8) | (f[at + 1] & 0xff);
    }

    private static byte[] slice(byte[] f, int at, int len) {
        byte[] out = new byte[len];
        System.arraycopy(f, at, out, 0, len);
        return out;
    }
}
