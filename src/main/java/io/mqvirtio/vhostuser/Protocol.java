package io.mqvirtio.vhostuser;

/** vhost-user constants: header layout and flags, feature bits, limits (QEMU docs/interop/vhost-user.rst). */
public final class Protocol {
    /** Header: le32 request, le32 flags, le32 size. */
    public static final int HEADER_SIZE = 12;
    public static final int VERSION = 0x1;
    public static final int VERSION_MASK = 0x3;
    public static final int FLAG_REPLY = 1 << 2;
    public static final int FLAG_NEED_REPLY = 1 << 3;

    /** The largest payload we accept: more than any request in {@link Request} needs (config space is 256). */
    public static final int MAX_PAYLOAD = 4096;
    /** Regions in one SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS). */
    public static final int MAX_TABLE_REGIONS = 8;
    /** Memory slots we answer to GET_MAX_MEM_SLOTS (and the most regions we keep). */
    public static final int MAX_MEM_SLOTS = 32;
    /** Bit 8 of a SET_VRING_KICK/CALL/ERR payload: no descriptor comes with it. */
    public static final long VRING_NOFD = 1L << 8;
    public static final long VRING_INDEX_MASK = 0xff;

    /** Virtio feature bit 30 (VHOST_USER_F_PROTOCOL_FEATURES). */
    public static final int F_PROTOCOL_FEATURES = 30;
    /** Virtio feature bit 26 (VHOST_F_LOG_ALL): dirty logging for migration. */
    public static final int F_LOG_ALL = 26;

    // Protocol feature bits.
    public static final int PF_MQ = 0;
    public static final int PF_LOG_SHMFD = 1;
    public static final int PF_RARP = 2;
    public static final int PF_REPLY_ACK = 3;
    public static final int PF_NET_MTU = 4;
    public static final int PF_BACKEND_REQ = 5;
    public static final int PF_CROSS_ENDIAN = 6;
    public static final int PF_CONFIG = 9;
    public static final int PF_BACKEND_SEND_FD = 10;
    public static final int PF_HOST_NOTIFIER = 11;
    public static final int PF_INFLIGHT_SHMFD = 12;
    public static final int PF_RESET_DEVICE = 13;
    public static final int PF_INBAND_NOTIFICATIONS = 14;
    public static final int PF_CONFIGURE_MEM_SLOTS = 15;
    public static final int PF_STATUS = 16;

    /** SET_VRING_ADDR flag: log used-ring writes (migration). */
    public static final int VRING_F_LOG = 1;

    private Protocol() {}
}
