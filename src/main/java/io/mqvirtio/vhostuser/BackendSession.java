package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.Protocol.*;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.memory.DirtyLog;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.GuestMemoryException;
import io.mqvirtio.memory.MappedMemory;
import io.mqvirtio.memory.MemoryBudget;
import io.mqvirtio.memory.MemoryRegion;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.RingLog;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * The backend side of one vhost-user connection: the control thread's loop. Reads each front-end message,
 * checks it against {@link Request}'s table and the session's state, applies it to the {@link VhostUserDevice},
 * and replies. Ring state follows vhost-user.rst: a ring starts when it has features, memory, a size, addresses and
 * a kick fd; GET_VRING_BASE stops it; SET_VRING_ENABLE enables it (all rings are enabled when protocol features were not
 * negotiated).
 *
 * <p>Errors: a malformed frame closes the connection (the stream cannot be resynchronised). A well-framed request
 * that cannot be carried out (an unknown id, a payload or descriptor count that does not match the request's row,
 * a value the request does not allow, or a state it cannot be applied in) is answered with a REPLY_ACK failure when
 * the front end asked for an ack and negotiated REPLY_ACK, and closes the connection otherwise; a request that has
 * a reply of its own closes the connection when it fails. Either way it is logged (a flood of failures is logged
 * in part), and only this connection is affected. A failure inside the device (a ring that does not stop) ends the
 * session.
 */
public final class BackendSession implements Runnable {
    private static final Logger LOG = System.getLogger(BackendSession.class.getName());

    /** Protocol features this session implements itself, on top of the device's. */
    static final long SESSION_PROTOCOL_FEATURES =
            (1L << PF_REPLY_ACK) | (1L << PF_CONFIGURE_MEM_SLOTS) | (1L << PF_STATUS) | (1L << PF_LOG_SHMFD);

    private final String name;
    private final Channel channel;
    private final VhostUserDevice device;
    private final Ring[] rings;

    private long ackedFeatures;
    private boolean featuresSet;
    private long ackedProtocolFeatures;
    private boolean owner;
    private int status;
    private MappedMemory memory = MappedMemory.EMPTY;
    private volatile boolean closing;
    /** The message loop has ended: the session is tearing down (or gone), whatever its frontend does now. */
    private volatile boolean ending;
    private final WarningLimit warnings;
    /** The allowance for the lines the frontend's ordinary requests log (see {@link WarningLimit#notices}). */
    private final WarningLimit notices;
    private final MemoryBudget budget;

    /** Per-ring protocol state; the running ring itself belongs to a device worker. */
    private static final class Ring {
        int num;
        boolean addrSet;
        long descUva;
        long availUva;
        long usedUva;
        /** SET_VRING_BASE's number as it came; decoded for the ring's layout when the ring starts. */
        long baseNum;
        /**
         * Where this ring last stopped in this session (encoded as GET_VRING_BASE answers it), or -1 once its size,
         * addresses or layout changed: a start from exactly that base resumes there (Rings.device's {@code exact})
         * rather than at the guess a frontend's base gets.
         */
        long stoppedAt = -1;
        EventFd kick;
        EventFd call;
        EventFd err;
        boolean enabled;
        /** SET_VRING_ENABLE was received since the ring last stopped: SET_FEATURES must not reset it (QEMU
         * sends the enables before SET_FEATURES when it reconnects to a restarted backend). */
        boolean enableSet;
        boolean started;
        /** Was running when the memory table changed and is not inside the new one: restarts when memory covers it. */
        boolean parked;
        /** SET_VRING_ADDR's VHOST_VRING_F_LOG, and its log_guest_addr: where writes to the used area are logged. */
        boolean logUsed;
        long logGuestAddr;

        /**
         * The ring stopped for good (GET_VRING_BASE, a reset): a later start needs a new kick fd, and (with protocol
         * features) a new enable; {@code enabled} is what it is until then.
         */
        void dropKick(boolean enabled) {
            this.enabled = enabled;
            enableSet = false;
            closeQuietly(kick);
            kick = null;
        }
    }

    /** The frontend's dirty log (SET_LOG_BASE), or null; rings log into it while LOG_ALL is negotiated. */
    private DirtyLog dirtyLog;

    public BackendSession(String name, Channel channel, VhostUserDevice device) {
        this(name, channel, device, new WarningLimit(name), WarningLimit.notices(name, device.maxRings()),
                MemoryBudget.processDefault());
    }

    /**
     * A session whose warnings share {@code warnings} with the other sessions of its socket, and whose guest memory
     * is reserved in {@code budget}.
     */
    BackendSession(String name, Channel channel, VhostUserDevice device, WarningLimit warnings, WarningLimit notices,
                   MemoryBudget budget) {
        this.budget = budget;
        this.warnings = warnings;
        this.notices = notices;
        this.name = name;
        this.channel = channel;
        this.device = device;
        this.rings = new Ring[device.maxRings()];
        for (int i = 0; i < rings.length; i++) {
            rings[i] = new Ring();
        }
    }

    public String name() {
        return name;
    }

    /** Serves messages until the front end disconnects or breaks the protocol; then stops every ring. */
    @Override
    public void run() {
        note("{0}: front end connected", name);
        try {
            while (!closing) {
                Message m;
                try {
                    m = channel.receive();
                } catch (VhostUserException e) {
                    if (!closing) {
                        warn("{0}: closing connection: {1}", name, e.getMessage());
                    }
                    return;
                }
                if (m == null) {
                    note("{0}: front end disconnected", name);
                    return;
                }
                try (m) {
                    if (!handle(m)) {
                        return;
                    }
                }
            }
        } finally {
            ending = true;
            teardown();
        }
    }

    /**
     * Whether this session is on its way out: its loop has ended, or its frontend has closed the connection (a
     * frontend that reconnects at once may come before this session has read the end of its stream).
     */
    boolean isEnding() {
        if (ending || closing) {
            return true;
        }
        try {
            return channel.socket().peerHungUp();
        } catch (RuntimeException e) {
            return true; // closed already
        }
    }

    /** Stops serving: wakes the control thread, which then tears the session down. */
    public void close() {
        closing = true;
        try {
            channel.socket().shutdown();
        } catch (RuntimeException ignored) {
            // already closed
        }
    }

    /** Handles one message; false to close the connection. */
    boolean handle(Message m) {
        Request r = m.request();
        boolean ack = m.needsReply() && (ackedProtocolFeatures & (1L << PF_REPLY_ACK)) != 0;
        try {
            if (r == null) {
                throw new VhostUserException("unknown request " + Integer.toUnsignedString(m.requestId()));
            }
            if (m.isReply()) {
                throw new VhostUserException(r + " arrived with the REPLY flag set");
            }
            checkShape(r, m);
            LOG.log(Level.DEBUG, "{0}: {1}", name, m);
            byte[] reply = apply(r, m);
            if (reply != null) {
                channel.reply(m, reply);
            } else if (ack) {
                channel.reply(m, Message.u64Payload(0));
            }
            return true;
        } catch (VhostUserException | GuestMemoryException | VirtqueueException | io.mqvirtio.linux.ErrnoException e) {
            // An unknown request has no reply of its own that we know of: with an ack asked for, the ack is its reply.
            if (ack && (r == null || !r.alwaysReplies)) {
                warn("{0}: {1} failed: {2}", name, m.name(), e.getMessage());
                try {
                    channel.reply(m, Message.u64Payload(1));
                    return true;
                } catch (VhostUserException sendFailed) {
                    return false;
                }
            }
            warn("{0}: {1} failed, closing connection: {2}", name, m.name(), e.getMessage());
            return false;
        } catch (InternalError e) {
            // What the JVM makes of SIGBUS on a mapped segment: the frontend shrank a memory file it shared (or the
            // memory is otherwise gone). Nothing in it can be trusted any more; end the session.
            warn("{0}: {1}: the shared memory became inaccessible (did the frontend shrink its memory file?), closing "
                    + "connection: {2}", name, m.name(), e.getMessage());
            return false;
        } catch (RuntimeException e) {
            // Not the frontend's fault as far as we can tell (e.g. a device worker that does not answer): end the
            // session, whose teardown then stops what it can.
            LOG.log(Level.ERROR, name + ": " + m.name() + " failed inside the backend, closing connection", e);
            return false;
        }
    }

    /** Logs a warning about what the frontend did, within the socket's allowance (see {@link WarningLimit}). */
    private void warn(String format, Object... args) {
        warnings.warn(LOG, format, args);
    }

    /**
     * Logs at INFO what the frontend's request did, within the socket's allowance for such lines: each of them can be
     * asked for in a loop, and the log is every VM's.
     */
    private void note(String format, Object... args) {
        notices.warn(LOG, format, args);
    }

    /** Payload size and descriptor count must match the request's row exactly. */
    private static void checkShape(Request r, Message m) {
        int size = m.size();
        switch (r.payload) {
            case MEM_TABLE -> {
                if (size < 8) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes has no region count");
                }
                int n = m.u32(0);
                if (n < 1 || n > MAX_TABLE_REGIONS) {
                    throw new VhostUserException(r + ": " + Integer.toUnsignedString(n) + " regions, expected 1.."
                            + MAX_TABLE_REGIONS);
                }
                if (size != 8 + 32 * n) {
                    throw new VhostUserException(r + ": " + n + " regions need " + (8 + 32 * n) + " bytes, got " + size);
                }
            }
            case CONFIG -> {
                if (size < 12) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes is shorter than its header");
                }
            }
            default -> {
                if (size != r.payload.size) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes, expected " + r.payload.size);
                }
            }
        }
        int fds = m.fdCount();
        boolean ok = switch (r.fds) {
            case NONE -> fds == 0;
            case ONE -> fds == 1;
            case ANY -> true;
            case ONE_PER_REGION -> fds == m.u32(0);
            case UNLESS_NOFD -> fds == ((m.u64(0) & VRING_NOFD) != 0 ? 0 : 1);
        };
        if (!ok) {
            throw new VhostUserException(r + " came with " + fds + " file descriptor" + (fds == 1 ? "" : "s")
                    + ", which does not match its payload");
        }
    }

    private byte[] apply(Request r, Message m) {
        return switch (r) {
            case GET_FEATURES -> Message.u64Payload(offeredFeatures());
            case SET_FEATURES -> {
                setFeatures(m.u64(0));
                yield null;
            }
            case SET_OWNER -> {
                owner = true;
                yield null;
            }
            case RESET_OWNER, RESET_DEVICE -> {
                if (r == Request.RESET_DEVICE) {
                    // vhost-user.rst allows it only with protocol feature RESET_DEVICE, which this session does not
                    // offer (QEMU then never sends it; DPDK's vhost does not know the request). Before, it reset the
                    // device for any frontend that sent it, negotiated or not.
                    requireProtocolFeature(PF_RESET_DEVICE, r);
                }
                if (!resetRings()) {
                    throw new IllegalStateException("a ring did not stop");
                }
                device.reset(); // nothing of what came before (parked frames, the MTU) outlives the reset
                for (Ring ring : rings) {
                    ring.stoppedAt = -1;
                    // Stopped and disabled, as a ring starts out (vhost-user.rst: the reset disables every ring). (An
                    // enable from before the reset outlived it: the next SET_FEATURES kept it, and a ring restarted
                    // without SET_VRING_ENABLE took RX frames and sent TX ones.)
                    ring.dropKick(false);
                }
                status = 0;
                note("{0}: device reset ({1})", name, r);
                ackedFeatures = 0;
                featuresSet = false;
                yield null;
            }
            case GET_PROTOCOL_FEATURES -> Message.u64Payload(offeredProtocolFeatures());
            case SET_PROTOCOL_FEATURES -> {
                long pf = m.u64(0);
                if ((pf & ~offeredProtocolFeatures()) != 0) {
                    throw new VhostUserException("protocol features 0x" + Long.toHexString(pf & ~offeredProtocolFeatures())
                            + " were not offered");
                }
                ackedProtocolFeatures = pf;
                note("{0}: protocol features {1}", name, VirtioFeatures.list(pf));
                yield null;
            }
            case GET_QUEUE_NUM -> Message.u64Payload(device.queueNum());
            case GET_MAX_MEM_SLOTS -> Message.u64Payload(MAX_MEM_SLOTS);
            case SET_MEM_TABLE -> {
                setMemTable(m);
                yield null;
            }
            case ADD_MEM_REG -> {
                requireProtocolFeature(PF_CONFIGURE_MEM_SLOTS, r);
                if (memory.regionCount() >= MAX_MEM_SLOTS) {
                    throw new VhostUserException("ADD_MEM_REG: all " + MAX_MEM_SLOTS + " memory slots are in use");
                }
                MappedMemory.Spec s = regionSpec(m, 8);
                MappedMemory next;
                long bytes;
                try (Fd fd = m.takeFd(0)) {
                    bytes = MappedMemory.mappingBytes(s, fd);
                    budget.reserve(memory.mappedBytes(), bytes);
                    try {
                        next = memory.plus(s, fd);
                    } catch (RuntimeException e) {
                        budget.release(bytes);
                        throw e;
                    }
                }
                replaceMemory(next, List.of(), false, bytes, 0); // the new table keeps the old mappings
                note("{0}: memory table {1}", name, memory.memory());
                yield null;
            }
            case REM_MEM_REG -> {
                requireProtocolFeature(PF_CONFIGURE_MEM_SLOTS, r);
                MappedMemory.Spec s = regionSpec(m, 8);
                List<AutoCloseable> removed = new ArrayList<>();
                MappedMemory next = memory.minus(s.guestPhysAddr(), s.size(), removed);
                long freed = memory.mappedBytes() - next.mappedBytes();
                // Rings inside the removed region wait (parked) for an ADD_MEM_REG that brings their memory back:
                // QEMU updates a table with slots by removing regions first and adding the new ones after.
                replaceMemory(next, removed, false, 0, freed);
                note("{0}: memory table {1}", name, memory.memory());
                yield null;
            }
            case SET_VRING_NUM -> {
                Ring ring = stoppedRing(m);
                int num = m.u32(4);
                if (!Rings.isValidSize(num, ackedFeatures)) {
                    throw new VhostUserException("SET_VRING_NUM: ring size " + Integer.toUnsignedString(num)
                            + " is not " + Rings.sizeRule(ackedFeatures));
                }
                ring.num = num;
                ring.stoppedAt = -1;
                yield null;
            }
            case SET_VRING_ADDR -> {
                int index = ringIndex(Integer.toUnsignedLong(m.u32(0)));
                Ring ring = rings[index];
                int flags = m.u32(4);
                if ((flags & ~VRING_F_LOG) != 0) {
                    throw new VhostUserException("SET_VRING_ADDR: unknown flags 0x" + Integer.toHexString(flags));
                }
                boolean logUsed = (flags & VRING_F_LOG) != 0;
                if (ring.started) {
                    // QEMU turns used-ring logging on and off this way while the ring runs (migration): only the
                    // log flag and address may change then.
                    if (ring.descUva != m.u64(8) || ring.usedUva != m.u64(16) || ring.availUva != m.u64(24)) {
                        throw new VhostUserException("SET_VRING_ADDR on ring " + index + " while it runs changes its addresses");
                    }
                    boolean wasLogUsed = ring.logUsed;
                    long wasAddr = ring.logGuestAddr;
                    ring.logUsed = logUsed;
                    ring.logGuestAddr = m.u64(32);
                    try {
                        device.setLog(index, ringLog(index));
                    } catch (VhostUserException e) {
                        ring.logUsed = wasLogUsed;
                        ring.logGuestAddr = wasAddr;
                        throw e;
                    }
                    yield null;
                }
                ring.descUva = m.u64(8);
                ring.usedUva = m.u64(16);
                ring.availUva = m.u64(24);
                ring.stoppedAt = -1;
                ring.logUsed = logUsed;
                ring.logGuestAddr = m.u64(32);
                ring.addrSet = true;
                yield null;
            }
            case SET_VRING_BASE -> {
                Ring ring = stoppedRing(m);
                long num = Integer.toUnsignedLong(m.u32(4));
                // checked against the layout now (a split base has 16 bits), and again when the ring starts
                RingBase.decode(num, packed(), ring.num == 0 ? 0x8000 : ring.num);
                ring.baseNum = num;
                yield null;
            }
            case GET_VRING_BASE -> {
                int index = ringIndex(Integer.toUnsignedLong(m.u32(0)));
                Ring ring = rings[index];
                if (ring.started) {
                    stop(index);
                    note("{0}: ring {1} stopped at {2}", name, index, describe(ring.baseNum));
                }
                ring.parked = false;
                ring.dropKick(!protocolFeaturesNegotiated());
                yield Message.vringState(index, (int) ring.baseNum);
            }
            case SET_VRING_KICK -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                if ((m.u64(0) & VRING_NOFD) != 0) {
                    throw new VhostUserException("SET_VRING_KICK for ring " + index + " without a kick fd (polling mode) is not supported");
                }
                Ring ring = rings[index];
                String missing = missingForStart(ring);
                if (missing != null) {
                    throw new VhostUserException("SET_VRING_KICK: ring " + index + " cannot start: " + missing);
                }
                EventFd kick = takeEventFd(m, "kick");
                if (ring.started) {
                    try {
                        stop(index);
                    } catch (RuntimeException e) {
                        kick.close();
                        throw e;
                    }
                }
                closeQuietly(ring.kick);
                ring.kick = kick;
                ring.parked = false;
                try {
                    start(index);
                } catch (GuestMemoryException e) {
                    // The memory table does not hold the ring (yet): it waits, kick and all, for one that does, as a
                    // ring waits that a new table left out while it ran (DPDK takes its rings again at each table).
                    ring.parked = true;
                    throw e;
                }
                yield null;
            }
            case SET_VRING_CALL -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                Ring ring = rings[index];
                EventFd call = (m.u64(0) & VRING_NOFD) != 0 ? null : takeEventFd(m, "call");
                if (ring.started) {
                    try {
                        device.setCall(index, call);
                    } catch (RuntimeException e) {
                        closeQuietly(call);
                        throw e;
                    }
                }
                closeQuietly(ring.call);
                ring.call = call;
                yield null;
            }
            case SET_VRING_ERR -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                Ring ring = rings[index];
                EventFd err = (m.u64(0) & VRING_NOFD) != 0 ? null : takeEventFd(m, "error");
                if (ring.started) {
                    try {
                        device.setErr(index, err);
                    } catch (RuntimeException e) {
                        closeQuietly(err);
                        throw e;
                    }
                }
                closeQuietly(ring.err);
                ring.err = err;
                yield null;
            }
            case SET_VRING_ENABLE -> {
                int index = ringIndex(Integer.toUnsignedLong(m.u32(0)));
                int on = m.u32(4);
                if (on != 0 && on != 1) {
                    throw new VhostUserException("SET_VRING_ENABLE: " + Integer.toUnsignedString(on) + " is neither 0 nor 1");
                }
                Ring ring = rings[index];
                if (ring.enabled != (on == 1)) {
                    note("{0}: ring {1} {2}", name, index, on == 1 ? "enabled" : "disabled");
                }
                ring.enabled = on == 1;
                ring.enableSet = true;
                if (ring.started) {
                    device.enableRing(index, ring.enabled);
                }
                yield null;
            }
            case SET_LOG_BASE -> {
                requireProtocolFeature(PF_LOG_SHMFD, r);
                setLogBase(m);
                yield new byte[0]; // QEMU waits for a reply and reads no payload (vhost-user.rst, "Communication")
            }
            case SET_LOG_FD -> {
                // Optional: an eventfd for telling the frontend that the log changed. QEMU reads the log when it
                // syncs and never needs the signal; the descriptor is not kept.
                closeQuietly(m.takeFd(0));
                yield null;
            }
            case SEND_RARP -> {
                requireProtocolFeature(PF_RARP, r);
                byte[] mac = Arrays.copyOf(m.payload(), 6);
                device.sendRarp(mac);
                note("{0}: sent RARP for {1}", name, java.util.HexFormat.ofDelimiter(":").formatHex(mac));
                yield null;
            }
            case NET_SET_MTU -> {
                requireProtocolFeature(PF_NET_MTU, r);
                long mtu = m.u64(0);
                if (mtu < 68 || mtu > 65535) {
                    throw new VhostUserException("NET_SET_MTU: " + Long.toUnsignedString(mtu) + " is outside 68..65535");
                }
                device.setMtu((int) mtu);
                note("{0}: frontend set MTU {1}", name, String.valueOf(mtu));
                yield null;
            }
            case SET_STATUS -> {
                requireProtocolFeature(PF_STATUS, r);
                long st = m.u64(0);
                if ((st & ~0xffL) != 0) {
                    throw new VhostUserException("SET_STATUS: 0x" + Long.toHexString(st) + " is not a status byte");
                }
                status = (int) st;
                device.setStatus(status);
                yield null;
            }
            case GET_STATUS -> {
                requireProtocolFeature(PF_STATUS, r);
                yield Message.u64Payload(status);
            }
            case SET_VRING_ENDIAN -> throw new VhostUserException("SET_VRING_ENDIAN: only little-endian (VERSION_1) rings are supported");
            default -> throw new VhostUserException(r + " is not supported by this backend (its feature was not offered)");
        };
    }

    private long offeredFeatures() {
        return device.features() | (1L << F_PROTOCOL_FEATURES) | (1L << F_LOG_ALL);
    }

    /** Whether rings log their writes now: LOG_ALL negotiated and a log given. */
    private boolean logging() {
        return dirtyLog != null && (ackedFeatures & (1L << F_LOG_ALL)) != 0;
    }

    /** What ring {@code index} logs into as things stand now (see {@link #ringLog(int, DirtyLog)}). */
    private RingLog ringLog(int index) {
        return ringLog(index, logging() ? dirtyLog : null);
    }

    /**
     * What ring {@code index} logs into while migrating into {@code log}, or null for no log. A split ring's used
     * ring is logged at the frontend's log address when it asked for that (VHOST_VRING_F_LOG); a packed ring writes
     * used descriptors into its descriptor ring and its device event area, logged where the memory table puts them.
     *
     * @throws VhostUserException if the used area's log address lies beyond the log
     */
    private RingLog ringLog(int index, DirtyLog log) {
        if (log == null) {
            return null;
        }
        Ring ring = rings[index];
        GuestMemory g = memory.memory();
        if (packed()) {
            long desc = gpaOrNone(g, ring.descUva);
            long event = ring.logUsed ? ring.logGuestAddr : gpaOrNone(g, ring.usedUva);
            checkInLog(log, index, event, 4);
            return new RingLog(log, desc, event);
        }
        if (!ring.logUsed) {
            return new RingLog(log, RingLog.NONE, RingLog.NONE);
        }
        checkInLog(log, index, ring.logGuestAddr, SplitRing.usedBytes(ring.num == 0 ? 1 : ring.num));
        return new RingLog(log, ring.logGuestAddr, RingLog.NONE);
    }

    private static long gpaOrNone(GuestMemory g, long uva) {
        try {
            return g.uvaToGpa(uva);
        } catch (GuestMemoryException e) {
            return RingLog.NONE; // not in memory: the ring cannot start either
        }
    }

    /** vhost-user.rst: the bit of the used ring's last byte must fall within the log. */
    private static void checkInLog(DirtyLog log, int index, long gpa, long len) {
        if (gpa == RingLog.NONE) {
            return;
        }
        long end = gpa + len;
        if (Long.compareUnsigned(end, gpa) < 0 || Long.compareUnsigned(end, log.coveredBytes()) > 0) {
            throw new VhostUserException("ring " + index + "'s used area at 0x" + Long.toHexString(gpa)
                    + " is logged beyond the log, which covers 0x" + Long.toHexString(log.coveredBytes()) + " bytes");
        }
    }

    /**
     * What every running ring would log into with {@code log} (null: none), each checked before any is handed over:
     * a change of log, or of LOG_ALL, that one ring refuses changes nothing. (Handed over ring by ring as they were
     * checked, a refusal at one ring left the rings before it logging and those after it not, while the session
     * itself had LOG_ALL on: a LOG_ALL sent again changed nothing, and those rings never logged.)
     */
    private RingLog[] ringLogs(DirtyLog log) {
        RingLog[] logs = new RingLog[rings.length];
        for (int i = 0; i < rings.length; i++) {
            if (rings[i].started) {
                logs[i] = ringLog(i, log);
            }
        }
        return logs;
    }

    /** Hands every running ring its log from {@link #ringLogs}. */
    private void handOver(RingLog[] logs) {
        for (int i = 0; i < rings.length; i++) {
            if (rings[i].started) {
                device.setLog(i, logs[i]);
            }
        }
    }

    /**
     * SET_LOG_BASE: maps the frontend's log and hands it to the running rings; a log it replaces is unmapped only
     * once every worker has flushed into it and let go of it (each setLog is a command the worker has run).
     */
    private void setLogBase(Message m) {
        long size = m.u64(0);
        long offset = m.u64(8);
        DirtyLog next;
        try (Fd fd = m.takeFd(0)) {
            next = DirtyLog.map(fd, size, offset);
        }
        if (!covers(next, memory.memory())) {
            next.close();
            throw new VhostUserException("SET_LOG_BASE: a log of " + size + " bytes covers 0x"
                    + Long.toHexString(next.coveredBytes()) + " bytes of guest memory, which reaches " + reach(memory.memory()));
        }
        RingLog[] logs;
        try {
            logs = ringLogs((ackedFeatures & (1L << F_LOG_ALL)) != 0 ? next : null);
        } catch (VhostUserException e) {
            next.close();
            throw e;
        }
        DirtyLog old = dirtyLog;
        dirtyLog = next;
        handOver(logs);
        if (old != null) {
            warnIfFaulted(old);
            old.close();
        }
        note("{0}: dirty log of {1} bytes (covers 0x{2} bytes of guest memory){3}", name, size,
                Long.toHexString(next.coveredBytes()), logging() ? ", logging" : "");
    }

    /** Reports a log whose file the frontend shrank while we marked it (the marks since were lost). */
    private void warnIfFaulted(DirtyLog log) {
        if (log.faulted()) {
            warn("{0}: the frontend shrank the file of its dirty log under us (SIGBUS): pages written since were not "
                    + "marked", name);
        }
    }

    /**
     * Whether {@code log} has a bit for every page of memory's regions. Guest-physical addresses are unsigned and a
     * region may end at 2^64: compared by their last bytes, unsigned. (A signed maximum of the regions' ends took a
     * region above 2^63, or one ending at 2^64, for memory below any log: accepted while logging, the frames that
     * landed there were never marked, since no bit of the log stands for them.)
     */
    private static boolean covers(DirtyLog log, GuestMemory m) {
        for (MemoryRegion r : m.regions()) {
            if (Long.compareUnsigned(r.lastGuestPhysAddr(), log.coveredBytes() - 1) > 0) {
                return false;
            }
        }
        return true;
    }

    /** Where guest memory ends, for messages: the end (exclusive) of its highest region, 2^64 included. */
    private static String reach(GuestMemory m) {
        long last = -1;
        boolean any = false;
        for (MemoryRegion r : m.regions()) {
            if (!any || Long.compareUnsigned(r.lastGuestPhysAddr(), last) > 0) {
                last = r.lastGuestPhysAddr();
                any = true;
            }
        }
        return !any ? "0x0" : last == -1 ? "0x10000000000000000" : "0x" + Long.toHexString(last + 1);
    }

    /**
     * While logging, memory must not reach beyond the log: a write there could not be marked, and the destination
     * would miss it (QEMU grows its log before it grows the memory table).
     */
    private void requireLogCovers(GuestMemory m, String what) {
        if (dirtyLog != null && !covers(dirtyLog, m)) {
            throw new VhostUserException(what + ": guest memory reaching " + reach(m)
                    + " while logging into a log that covers 0x" + Long.toHexString(dirtyLog.coveredBytes()) + " bytes");
        }
    }

    private long offeredProtocolFeatures() {
        return device.protocolFeatures() | SESSION_PROTOCOL_FEATURES;
    }

    /** Whether the rings are packed (VIRTIO_F_RING_PACKED negotiated). */
    private boolean packed() {
        return VirtioFeatures.has(ackedFeatures, VirtioFeatures.F_RING_PACKED);
    }

    /** A ring base for the log: "avail index 7" (split), "avail 7/1 used 5/1" (packed: index/wrap counter). */
    private String describe(long num) {
        if (!packed()) {
            return "avail index " + num;
        }
        return "avail " + (num & 0x7fff) + "/" + ((num >> 15) & 1) + " used " + ((num >> 16) & 0x7fff) + "/" + ((num >> 31) & 1);
    }

    private boolean protocolFeaturesNegotiated() {
        return (ackedFeatures & (1L << F_PROTOCOL_FEATURES)) != 0;
    }

    private void requireProtocolFeature(int bit, Request r) {
        if ((ackedProtocolFeatures & (1L << bit)) == 0) {
            throw new VhostUserException(r + " needs protocol feature " + bit + ", which was not negotiated");
        }
    }

    private void setFeatures(long f) {
        long extra = f & ~offeredFeatures();
        if (extra != 0) {
            throw new VhostUserException("SET_FEATURES: bits " + VirtioFeatures.list(extra) + " were not offered");
        }
        long logAll = 1L << F_LOG_ALL;
        boolean running = false;
        for (Ring ring : rings) {
            running |= ring.started;
        }
        if (running && (f & ~logAll) != (ackedFeatures & ~logAll)) {
            throw new VhostUserException("SET_FEATURES: features other than LOG_ALL cannot change while rings run");
        }
        if (!running) {
            // (rings that run already run with what they have: only LOG_ALL may change then)
            device.checkFeatures(f);
        }
        if ((f & logAll) != 0 && dirtyLog == null) {
            throw new VhostUserException("SET_FEATURES: LOG_ALL without a log (SET_LOG_BASE comes first)");
        }
        if ((f & logAll) != 0) {
            requireLogCovers(memory.memory(), "SET_FEATURES: LOG_ALL");
        }
        // The running rings' logs for the new features, all checked before anything changes. Handed over whenever
        // LOG_ALL changes, a first SET_FEATURES included (rings may run before it: LOG_ALL is the one feature it may
        // then bring, and the path of a first negotiation never handed the running rings the log).
        RingLog[] logs = ((f ^ ackedFeatures) & logAll) != 0 ? ringLogs((f & logAll) != 0 ? dirtyLog : null) : null;
        if (featuresSet && (f ^ ackedFeatures) == logAll) {
            // Migration starts or ends: the rings go on, logging or not (a ring is never stopped for this).
            ackedFeatures = f;
            note("{0}: dirty logging {1}", name, (f & logAll) != 0 ? "on" : "off");
            handOver(logs);
            return;
        }
        if (!featuresSet || f != ackedFeatures) {
            note("{0}: features {1}", name, VirtioFeatures.list(f));
        }
        boolean first = !featuresSet;
        boolean hadProtocol = protocolFeaturesNegotiated();
        if (f != ackedFeatures) {
            for (Ring ring : rings) {
                ring.stoppedAt = -1; // the layout may change: a base of the old one is a frontend's word again
            }
        }
        ackedFeatures = f;
        featuresSet = true;
        if (first || hadProtocol != protocolFeaturesNegotiated()) {
            // Without protocol features rings are enabled from the start (vhost-user.rst, "Ring states").
            for (Ring ring : rings) {
                if (!ring.started && !ring.enableSet) {
                    ring.enabled = !protocolFeaturesNegotiated();
                }
            }
        }
        device.setFeatures(f & ~(1L << F_PROTOCOL_FEATURES) & ~logAll);
        if (logs != null) {
            handOver(logs);
        }
    }

    private int ringIndex(long index) {
        if (index < 0 || index >= rings.length) {
            throw new VhostUserException("ring index " + Long.toUnsignedString(index) + " is beyond the " + rings.length
                    + " rings of this device");
        }
        return (int) index;
    }

    private Ring stoppedRing(Message m) {
        int index = ringIndex(Integer.toUnsignedLong(m.u32(0)));
        if (rings[index].started) {
            throw new VhostUserException(m.name() + " on ring " + index + " while it runs");
        }
        return rings[index];
    }

    private static void checkVringFileBits(Message m) {
        long v = m.u64(0);
        if ((v & ~(VRING_INDEX_MASK | VRING_NOFD)) != 0) {
            throw new VhostUserException(m.name() + ": unknown bits in 0x" + Long.toHexString(v));
        }
    }

    /**
     * The message's descriptor as an eventfd, which kick, call and error descriptors must be: anything else (a
     * socket, a memory file, a pipe) fails in the workers' hands in ways the protocol gives them no answer to. It is
     * made non-blocking (the flag is shared with the frontend, whose eventfds QEMU and DPDK create non-blocking
     * anyway): a frontend that drains a kick first, or fills a call counter to the brim, then cannot block a worker.
     */
    private static EventFd takeEventFd(Message m, String what) {
        EventFd e = EventFd.adopt(m.takeRawFd(0));
        try {
            String kind = descriptorKind(e.fd());
            if (kind != null && !kind.equals("anon_inode:[eventfd]")) {
                throw new VhostUserException(m.name() + ": the " + what + " descriptor is " + kind + ", not an eventfd");
            }
            if (what.equals("kick") && isSemaphore(e.fd())) {
                // Each read takes one from its counter: one write of a large count keeps it readable for as many
                // reads (the workers watch kicks edge-triggered, so it costs a wake-up per write, never a spin).
                throw new VhostUserException(m.name() + ": the kick eventfd is in semaphore mode (EFD_SEMAPHORE): "
                        + "a read must empty it");
            }
            e.setNonBlocking(true);
            return e;
        } catch (RuntimeException ex) {
            e.close();
            throw ex;
        }
    }

    /**
     * Whether eventfd {@code fd} is in semaphore mode, as its fdinfo says ("eventfd-semaphore: 1"); false where the
     * kernel does not say.
     */
    private static boolean isSemaphore(int fd) {
        try {
            for (String line : java.nio.file.Files.readAllLines(java.nio.file.Path.of("/proc/self/fdinfo/" + fd))) {
                if (line.startsWith("eventfd-semaphore:")) {
                    return line.substring("eventfd-semaphore:".length()).trim().equals("1");
                }
            }
        } catch (java.io.IOException | RuntimeException e) {
            // no /proc: the workers' edge-triggered watch bounds it
        }
        return false;
    }

    /** What an open descriptor is, as /proc names it ("socket:[123]", "anon_inode:[eventfd]"); null if unknown. */
    private static String descriptorKind(int fd) {
        try {
            return java.nio.file.Files.readSymbolicLink(java.nio.file.Path.of("/proc/self/fd/" + fd)).toString();
        } catch (java.io.IOException | UnsupportedOperationException e) {
            return null; // no /proc: trust the frontend here
        }
    }

    private static MappedMemory.Spec regionSpec(Message m, int at) {
        return new MappedMemory.Spec(m.u64(at), m.u64(at + 8), m.u64(at + 16), m.u64(at + 24));
    }

    /** The region count and payload size were checked with the message's shape. */
    private void setMemTable(Message m) {
        int n = m.u32(0);
        List<MappedMemory.Spec> specs = new ArrayList<>();
        List<Fd> fds = new ArrayList<>();
        try {
            long bytes = 0;
            for (int i = 0; i < n; i++) {
                MappedMemory.Spec spec = regionSpec(m, 8 + 32 * i);
                specs.add(spec);
                fds.add(m.takeFd(i));
                bytes = Math.addExact(bytes, MappedMemory.mappingBytes(spec, fds.get(i)));
            }
            // The new table replaces the old one: this VM's limit applies to it alone (the process's budget counts
            // both while the old one is still mapped).
            budget.reserve(0, bytes);
            MappedMemory next;
            try {
                next = MappedMemory.of(specs, fds);
            } catch (RuntimeException e) {
                budget.release(bytes);
                throw e;
            }
            note("{0}: memory table {1}", name, next.memory());
            replaceMemory(next, List.of(memory), true, bytes, memory.mappedBytes());
        } catch (ArithmeticException e) {
            throw new GuestMemoryException("the memory table's regions add up to more than 2^63 bytes");
        } finally {
            fds.forEach(Fd::close); // the mappings keep the memory alive
        }
    }

    /**
     * Installs a new memory table. Running rings are stopped, the old mappings ({@code retired}) are released only
     * once no worker can read them, and the rings restart on the new table at the indexes they stopped at. A ring
     * the new table does not hold is parked: it restarts when a later table holds it. With {@code whole} (a whole
     * new table, SET_MEM_TABLE) that is also reported as this request's failure, since the frontend's table is
     * then wrong; ADD/REM_MEM_REG change a table piece by piece and may pass through such a state.
     */
    private void replaceMemory(MappedMemory next, List<AutoCloseable> retired, boolean whole, long reservedForNext,
                               long retiredBytes) {
        List<Integer> restart = new ArrayList<>();
        try {
            if (logging()) {
                requireLogCovers(next.memory(), whole ? "SET_MEM_TABLE" : "ADD_MEM_REG");
            }
            for (int i = 0; i < rings.length; i++) {
                if (rings[i].started) {
                    stop(i); // a ring that does not stop ends the session (and then nothing is unmapped)
                    restart.add(i);
                } else if (rings[i].parked) {
                    restart.add(i);
                }
            }
        } catch (RuntimeException e) {
            next.closeExcept(memory); // no worker has seen the new mappings; the old ones stay in use
            budget.release(reservedForNext);
            throw e;
        }
        memory = next;
        retired.forEach(BackendSession::closeQuietly);
        budget.release(retiredBytes);
        List<String> parked = new ArrayList<>();
        for (int i : restart) {
            rings[i].parked = false;
            try {
                start(i);
                if (!rings[i].started) {
                    throw new VhostUserException(missingForStart(rings[i]));
                }
            } catch (GuestMemoryException | VirtqueueException | VhostUserException e) {
                rings[i].parked = true;
                parked.add("ring " + i + ": " + e.getMessage());
            }
        }
        if (!parked.isEmpty()) {
            note("{0}: waiting for memory to hold {1}", name, parked);
            if (whole) {
                throw new VhostUserException("the new memory table does not hold running rings (stopped): " + parked);
            }
        }
    }

    /** What ring {@code ring} lacks to start, or null. */
    private String missingForStart(Ring ring) {
        List<String> missing = new ArrayList<>();
        if (!featuresSet) {
            // The ring's layout and the net header's size come with the features (virtio: FEATURES_OK before
            // DRIVER_OK; QEMU and DPDK's virtio-user send SET_FEATURES before any kick). Before, a ring kicked first
            // ran with features 0 and a 12-byte header, where such a legacy driver's is 10 bytes (NegotiationTest).
            missing.add("no features (SET_FEATURES)");
        }
        if (memory.regionCount() == 0) {
            missing.add("no memory table");
        }
        if (ring.num == 0) {
            missing.add("no size (SET_VRING_NUM)");
        }
        if (!ring.addrSet) {
            missing.add("no addresses (SET_VRING_ADDR)");
        }
        return missing.isEmpty() ? null : String.join(", ", missing);
    }

    /**
     * A packed base whose used half is zero, where the ring resumes with its used position at the avail one: what
     * DPDK's virtio-user sends at every start (only the avail half), not a sign of frames in flight.
     */
    private static boolean onlyAvailHalf(RingBase asked, RingBase at) {
        return asked.used() == 0 && !asked.usedWrap() && at.avail() == asked.avail()
                && at.availWrap() == asked.availWrap() && at.used() == at.avail() && at.usedWrap() == at.availWrap();
    }

    /**
     * Starts ring {@code index} on the current memory. Its addresses are checked here: a ring outside the shared
     * memory, or misaligned, is a {@link GuestMemoryException} or {@link VirtqueueException} and does not start.
     */
    private void start(int index) {
        Ring ring = rings[index];
        if (ring.started || ring.kick == null || missingForStart(ring) != null) {
            return;
        }
        GuestMemory g = memory.memory();
        int num = ring.num;
        RingBase asked = RingBase.decode(ring.baseNum, packed(), num);
        boolean own = ring.baseNum == ring.stoppedAt;
        DeviceRing q = Rings.device(g, num, ring.descUva, ring.availUva, ring.usedUva, ackedFeatures, asked, own);
        boolean differs = packed() ? !q.base().equals(asked) && !onlyAvailHalf(asked, q.base())
                : q.base().avail() != asked.avail();
        if (differs && own) {
            // This session's own base: its avail half counts the chains the ring had taken and not used when it
            // stopped (a burst a fault ended: discardUnpublished takes back the completions, not the chains), and
            // the ring is built to take them again from its used position. Nothing the frontend did: no warning.
            note("{0}: ring {1}: chains in flight at the stop ({2}) are taken again from {3}",
                    name, index, describe(ring.baseNum), describe(Integer.toUnsignedLong(q.base().encode(packed()))));
        } else if (differs) {
            // Chains between the used index and the frontend's avail index were in flight with a backend that went
            // away: the ring takes them again from the used index (TX may resend a few frames; no RX buffer is lost).
            warn("{0}: ring {1}: base {2} differs from where the ring stands ({3}); resuming there",
                    name, index, describe(ring.baseNum), describe(Integer.toUnsignedLong(q.base().encode(packed()))));
        }
        q.setLog(ringLog(index));
        device.startRing(index, q, ring.kick, ring.call, ring.enabled);
        ring.started = true;
        if (ring.err != null) {
            device.setErr(index, ring.err);
        }
        note("{0}: ring {1} started: size {2}, {3}, {4}", name, index, num,
                describe(Integer.toUnsignedLong(q.base().encode(packed()))), ring.enabled ? "enabled" : "disabled");
    }

    /**
     * Stops ring {@code index}: afterwards no worker touches its memory. A device that fails to stop a ring is a
     * failure of the backend, not of the frontend: an {@link IllegalStateException} that ends the session.
     */
    private void stop(int index) {
        DeviceRing q;
        try {
            q = device.stopRing(index);
        } catch (RuntimeException e) {
            throw new IllegalStateException("ring " + index + " did not stop: " + e.getMessage(), e);
        }
        rings[index].started = false;
        q.setLog(null); // what the worker marked and did not flush goes into the log before anyone reads it
        rings[index].baseNum = Integer.toUnsignedLong(q.base().encode(packed()));
        rings[index].stoppedAt = rings[index].baseNum;
    }

    /** Stops every running ring; returns false if one did not stop (its worker may still read guest memory). */
    private boolean resetRings() {
        boolean allStopped = true;
        for (int i = 0; i < rings.length; i++) {
            rings[i].parked = false;
            if (rings[i].started) {
                try {
                    stop(i);
                } catch (RuntimeException e) {
                    LOG.log(Level.ERROR, name + ": " + e.getMessage(), e);
                    allStopped = false;
                }
            }
        }
        return allStopped;
    }

    private void teardown() {
        boolean stopped = resetRings();
        if (stopped && device.deadReason() == null) {
            try {
                device.reset();
            } catch (RuntimeException e) {
                LOG.log(Level.WARNING, "{0}: resetting the device: {1}", name, e.toString());
            }
        }
        String dead = device.deadReason();
        if (stopped && dead == null) {
            for (Ring ring : rings) {
                closeQuietly(ring.kick);
                closeQuietly(ring.call);
                closeQuietly(ring.err);
                ring.kick = ring.call = ring.err = null;
            }
            long bytes = memory.mappedBytes();
            memory.close();
            budget.release(bytes);
            if (dirtyLog != null) {
                warnIfFaulted(dirtyLog);
            }
            closeQuietly(dirtyLog);
            dirtyLog = null;
        } else {
            // A worker may still read this memory and use these descriptors: unmapping would crash the process, and a
            // closed descriptor's number would soon name another VM's file. Keep both (a leak we log, once per session).
            LOG.log(Level.ERROR, "{0}: {1}; its guest memory stays mapped and its descriptors open", name,
                    dead != null ? "the device is dead (" + dead + ")" : "a ring did not stop");
        }
        memory = MappedMemory.EMPTY;
        channel.close();
        note("{0}: session closed", name);
    }

    private static void closeQuietly(AutoCloseable c) {
        if (c != null) {
            try {
                c.close();
            } catch (Exception ignored) {
                // closing an fd cannot fail in a way we could act on
            }
        }
    }
}
