package io.mqvirtio.net;

/** virtio-net feature bits and the packet header (VIRTIO 1.3, 5.1). */
public final class VirtioNet {
    public static final int F_CSUM = 0;
    public static final int F_GUEST_CSUM = 1;
    public static final int F_CTRL_GUEST_OFFLOADS = 2;
    public static final int F_MTU = 3;
    public static final int F_MAC = 5;
    public static final int F_GUEST_TSO4 = 7;
    public static final int F_GUEST_TSO6 = 8;
    public static final int F_GUEST_ECN = 9;
    public static final int F_GUEST_UFO = 10;
    public static final int F_HOST_TSO4 = 11;
    public static final int F_HOST_TSO6 = 12;
    public static final int F_HOST_ECN = 13;
    public static final int F_HOST_UFO = 14;
    public static final int F_MRG_RXBUF = 15;
    public static final int F_STATUS = 16;
    public static final int F_CTRL_VQ = 17;
    public static final int F_CTRL_RX = 18;
    public static final int F_CTRL_VLAN = 19;
    public static final int F_GUEST_ANNOUNCE = 21;
    public static final int F_MQ = 22;
    public static final int F_CTRL_MAC_ADDR = 23;

    /** struct virtio_net_hdr_v1: what precedes every frame once VERSION_1 is negotiated. */
    public static final int HDR_SIZE = 12;
    public static final int HDR_FLAGS = 0, HDR_GSO_TYPE = 1, HDR_HDR_LEN = 2, HDR_GSO_SIZE = 4, HDR_CSUM_START = 6,
            HDR_CSUM_OFFSET = 8, HDR_NUM_BUFFERS = 10;
    public static final int HDR_F_NEEDS_CSUM = 1, HDR_F_DATA_VALID = 2;
    public static final int GSO_NONE = 0, GSO_TCPV4 = 1, GSO_UDP = 3, GSO_TCPV6 = 4, GSO_ECN = 0x80;

    /** The largest frame a GSO packet may be (64 KiB of IP plus the Ethernet and VLAN headers). */
    public static final int MAX_GSO_FRAME = 65535 + 14 + 4;

    /** Queue pairs: the control queue would be ring 2 × pairs (the frontend runs it). */
    public static final int MAX_PAIRS = 256;

    private VirtioNet() {}

    public static boolean isRx(int ring) {
        return (ring & 1) == 0;
    }

    public static int pairOf(int ring) {
        return ring >> 1;
    }
}
