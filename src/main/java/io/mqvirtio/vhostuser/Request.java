package io.mqvirtio.vhostuser;

/**
 * The vhost-user front-end requests (QEMU docs/interop/vhost-user.rst, "Front-end message types"): one row per
 * request with its id, its payload, whether it carries file descriptors, and whether it always has a reply.
 * A request this table lacks, or one whose payload or descriptors do not match its row, is refused.
 */
public enum Request {
    //                        id  payload                  fds                 always replies
    GET_FEATURES(1, Payload.NONE, Fds.NONE, true),
    SET_FEATURES(2, Payload.U64, Fds.NONE, false),
    SET_OWNER(3, Payload.NONE, Fds.NONE, false),
    RESET_OWNER(4, Payload.NONE, Fds.NONE, false),
    SET_MEM_TABLE(5, Payload.MEM_TABLE, Fds.ONE_PER_REGION, false),
    SET_LOG_BASE(6, Payload.LOG, Fds.ONE, true),
    SET_LOG_FD(7, Payload.NONE, Fds.ONE, false),
    SET_VRING_NUM(8, Payload.VRING_STATE, Fds.NONE, false),
    SET_VRING_ADDR(9, Payload.VRING_ADDR, Fds.NONE, false),
    SET_VRING_BASE(10, Payload.VRING_STATE, Fds.NONE, false),
    GET_VRING_BASE(11, Payload.VRING_STATE, Fds.NONE, true),
    SET_VRING_KICK(12, Payload.U64, Fds.UNLESS_NOFD, false),
    SET_VRING_CALL(13, Payload.U64, Fds.UNLESS_NOFD, false),
    SET_VRING_ERR(14, Payload.U64, Fds.UNLESS_NOFD, false),
    GET_PROTOCOL_FEATURES(15, Payload.NONE, Fds.NONE, true),
    SET_PROTOCOL_FEATURES(16, Payload.U64, Fds.NONE, false),
    GET_QUEUE_NUM(17, Payload.NONE, Fds.NONE, true),
    SET_VRING_ENABLE(18, Payload.VRING_STATE, Fds.NONE, false),
    SEND_RARP(19, Payload.U64, Fds.NONE, false),
    NET_SET_MTU(20, Payload.U64, Fds.NONE, false),
    SET_BACKEND_REQ_FD(21, Payload.NONE, Fds.ONE, false),
    IOTLB_MSG(22, Payload.IOTLB, Fds.NONE, false),
    SET_VRING_ENDIAN(23, Payload.VRING_STATE, Fds.NONE, false),
    GET_CONFIG(24, Payload.CONFIG, Fds.NONE, true),
    SET_CONFIG(25, Payload.CONFIG, Fds.NONE, false),
    GET_INFLIGHT_FD(31, Payload.INFLIGHT, Fds.NONE, true),
    SET_INFLIGHT_FD(32, Payload.INFLIGHT, Fds.ONE, false),
    RESET_DEVICE(34, Payload.NONE, Fds.NONE, false),
    VRING_KICK(35, Payload.VRING_STATE, Fds.NONE, false),
    GET_MAX_MEM_SLOTS(36, Payload.NONE, Fds.NONE, true),
    ADD_MEM_REG(37, Payload.MEM_REGION, Fds.ONE, false),
    REM_MEM_REG(38, Payload.MEM_REGION, Fds.ANY, false),
    SET_STATUS(39, Payload.U64, Fds.NONE, false),
    GET_STATUS(40, Payload.NONE, Fds.NONE, true);

    /** Payload shapes and their sizes in bytes (-1: variable, checked by the parser). */
    public enum Payload {
        NONE(0), U64(8), VRING_STATE(8), VRING_ADDR(40), MEM_TABLE(-1), MEM_REGION(40), LOG(16), IOTLB(40),
        CONFIG(-1), INFLIGHT(24);

        public final int size;

        Payload(int size) {
            this.size = size;
        }
    }

    /**
     * What descriptors come with a request. UNLESS_NOFD: one, unless bit 8 of the u64 payload says "no fd".
     * ANY: QEMU sends REM_MEM_REG with the region's fd, though the spec does not need it; accepted and closed.
     */
    public enum Fds {
        NONE, ONE, ONE_PER_REGION, UNLESS_NOFD, ANY
    }

    public final int id;
    public final Payload payload;
    public final Fds fds;
    public final boolean alwaysReplies;

    private static final Request[] BY_ID = new Request[64];

    static {
        for (Request r : values()) {
            BY_ID[r.id] = r;
        }
    }

    Request(int id, Payload payload, Fds fds, boolean alwaysReplies) {
        this.id = id;
        this.payload = payload;
        this.fds = fds;
        this.alwaysReplies = alwaysReplies;
    }

    /** The request with this id, or null. */
    public static Request of(int id) {
        return id > 0 && id < BY_ID.length ? BY_ID[id] : null;
    }
}
