package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.Protocol.*;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.memory.GuestMemory;
import io.mqvirtio.memory.GuestMemoryException;
import io.mqvirtio.memory.MappedMemory;
import io.mqvirtio.virtio.DeviceQueue;
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
 * and replies. Ring state follows vhost-user.rst: a ring starts when it has memory, a size, addresses and a kick
 * fd; GET_VRING_BASE stops it; SET_VRING_ENABLE enables it (all rings are enabled when protocol features were not
 * negotiated).
 *
 * <p>Errors: a malformed frame closes the connection (the stream cannot be resynchronised). A well-framed request
 * that cannot be carried out is answered with a REPLY_ACK failure when the front end asked for an ack, and closes
 * the connection otherwise. Either way it is logged, and only this connection is affected.
 */
public final class BackendSession implements Runnable {
    private static final Logger LOG = System.getLogger(BackendSession.class.getName());
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** Protocol features this session implements itself, on top of the device's. */
    static final long SESSION_PROTOCOL_FEATURES =
            (1L << PF_REPLY_ACK) | (1L << PF_CONFIGURE_MEM_SLOTS) | (1L << PF_STATUS);

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

    /** Per-ring protocol state; the running ring itself belongs to a device worker. */
    private static final class Ring {
        int num;
        boolean addrSet;
        long descUva;
        long availUva;
        long usedUva;
        int base;
        EventFd kick;
        EventFd call;
        EventFd err;
        boolean enabled;
        boolean started;
    }

    public BackendSession(String name, Channel channel, VhostUserDevice device) {
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
        LOG.log(Level.INFO, "{0}: front end connected", name);
        try {
            while (!closing) {
                Message m;
                try {
                    m = channel.receive();
                } catch (VhostUserException e) {
                    if (!closing) {
                        LOG.log(Level.WARNING, "{0}: closing connection: {1}", name, e.getMessage());
                    }
                    return;
                }
                if (m == null) {
                    LOG.log(Level.INFO, "{0}: front end disconnected", name);
                    return;
                }
                try (m) {
                    if (!handle(m)) {
                        return;
                    }
                }
            }
        } finally {
            teardown();
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
                throw new VhostUserException("unknown request " + m.requestId());
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
            if (ack && r != null && !r.alwaysReplies) {
                LOG.log(Level.WARNING, "{0}: {1} failed: {2}", name, m.name(), e.getMessage());
                try {
                    channel.reply(m, Message.u64Payload(1));
                    return true;
                } catch (VhostUserException sendFailed) {
                    return false;
                }
            }
            LOG.log(Level.WARNING, "{0}: {1} failed, closing connection: {2}", name, m.name(), e.getMessage());
            return false;
        }
    }

    /** Payload size and descriptor count must match the request's row. */
    private static void checkShape(Request r, Message m) {
        int size = m.size();
        switch (r.payload) {
            case MEM_TABLE -> {
                if (size < 8 || (size - 8) % 32 != 0) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes is not 8 + 32 x regions");
                }
            }
            case CONFIG -> {
                if (size < 12) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes is shorter than its header");
                }
            }
            default -> {
                // Front ends may send a larger union than needed for some requests; fewer bytes are never valid.
                if (size < r.payload.size || (r.payload.size == 0 && size > 8)) {
                    throw new VhostUserException(r + ": payload of " + size + " bytes, expected " + r.payload.size);
                }
            }
        }
        int fds = m.fdCount();
        boolean ok = switch (r.fds) {
            case NONE -> fds == 0;
            case ONE -> fds == 1;
            case ANY -> true;
            case ONE_PER_REGION -> size >= 8 && fds == m.u32(0);
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
                resetRings();
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
                LOG.log(Level.INFO, "{0}: protocol features {1}", name, VirtioFeatures.list(pf));
                yield null;
            }
            case GET_QUEUE_NUM -> Message.u64Payload(device.queueNum());
            case GET_MAX_MEM_SLOTS -> Message.u64Payload(MAX_MEM_SLOTS);
            case SET_MEM_TABLE -> {
                setMemTable(m);
                yield null;
            }
            case ADD_MEM_REG -> {
                if (memory.regionCount() >= MAX_MEM_SLOTS) {
                    throw new VhostUserException("ADD_MEM_REG: all " + MAX_MEM_SLOTS + " memory slots are in use");
                }
                MappedMemory.Spec s = regionSpec(m, 8);
                try (Fd fd = m.takeFd(0)) {
                    replaceMemory(memory.plus(s, fd), List.of()); // the new table keeps the old mappings
                }
                yield null;
            }
            case REM_MEM_REG -> {
                MappedMemory.Spec s = regionSpec(m, 8);
                List<AutoCloseable> removed = new ArrayList<>();
                MappedMemory next = memory.minus(s.guestPhysAddr(), s.size(), removed);
                replaceMemory(next, removed);
                yield null;
            }
            case SET_VRING_NUM -> {
                Ring ring = stoppedRing(m);
                int num = m.u32(4);
                if (!SplitRing.isValidSize(num)) {
                    throw new VhostUserException("SET_VRING_NUM: ring size " + Integer.toUnsignedString(num)
                            + " is not a power of two in 1.." + SplitRing.MAX_SIZE);
                }
                ring.num = num;
                yield null;
            }
            case SET_VRING_ADDR -> {
                Ring ring = stoppedRing(m);
                if ((m.u32(4) & VRING_F_LOG) != 0) {
                    throw new VhostUserException("SET_VRING_ADDR: used-ring logging was asked for but LOG_ALL is not offered");
                }
                ring.descUva = m.u64(8);
                ring.usedUva = m.u64(16);
                ring.availUva = m.u64(24);
                ring.addrSet = true;
                yield null;
            }
            case SET_VRING_BASE -> {
                Ring ring = stoppedRing(m);
                int base = m.u32(4);
                if (Integer.compareUnsigned(base, 0xffff) > 0) {
                    throw new VhostUserException("SET_VRING_BASE: index " + Integer.toUnsignedString(base)
                            + " does not fit a split ring's 16 bits");
                }
                ring.base = base;
                yield null;
            }
            case GET_VRING_BASE -> {
                int index = ringIndex(m.u32(0));
                Ring ring = rings[index];
                if (ring.started) {
                    stop(index);
                    LOG.log(Level.INFO, "{0}: ring {1} stopped at avail index {2}", name, index, ring.base);
                }
                // The ring is stopped: a later start needs a new kick fd, and (with protocol features) a new enable.
                ring.enabled = !protocolFeaturesNegotiated();
                closeQuietly(ring.kick);
                ring.kick = null;
                yield Message.vringState(index, ring.base);
            }
            case SET_VRING_KICK -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                if ((m.u64(0) & VRING_NOFD) != 0) {
                    throw new VhostUserException("SET_VRING_KICK for ring " + index + " without a kick fd (polling mode) is not supported");
                }
                Ring ring = rings[index];
                EventFd kick = EventFd.adopt(m.takeRawFd(0));
                if (ring.started) {
                    stop(index);
                }
                closeQuietly(ring.kick);
                ring.kick = kick;
                start(index);
                yield null;
            }
            case SET_VRING_CALL -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                Ring ring = rings[index];
                EventFd call = (m.u64(0) & VRING_NOFD) != 0 ? null : EventFd.adopt(m.takeRawFd(0));
                if (ring.started) {
                    device.setCall(index, call);
                }
                closeQuietly(ring.call);
                ring.call = call;
                yield null;
            }
            case SET_VRING_ERR -> {
                int index = ringIndex(m.u64(0) & VRING_INDEX_MASK);
                checkVringFileBits(m);
                Ring ring = rings[index];
                EventFd err = (m.u64(0) & VRING_NOFD) != 0 ? null : EventFd.adopt(m.takeRawFd(0));
                if (ring.started) {
                    device.setErr(index, err);
                }
                closeQuietly(ring.err);
                ring.err = err;
                yield null;
            }
            case SET_VRING_ENABLE -> {
                int index = ringIndex(m.u32(0));
                int on = m.u32(4);
                if (on != 0 && on != 1) {
                    throw new VhostUserException("SET_VRING_ENABLE: " + Integer.toUnsignedString(on) + " is neither 0 nor 1");
                }
                Ring ring = rings[index];
                if (ring.enabled != (on == 1)) {
                    LOG.log(Level.INFO, "{0}: ring {1} {2}", name, index, on == 1 ? "enabled" : "disabled");
                }
                ring.enabled = on == 1;
                if (ring.started) {
                    device.enableRing(index, ring.enabled);
                }
                yield null;
            }
            case SEND_RARP -> {
                requireProtocolFeature(PF_RARP, r);
                device.sendRarp(Arrays.copyOf(m.payload(), 6));
                yield null;
            }
            case NET_SET_MTU -> {
                requireProtocolFeature(PF_NET_MTU, r);
                long mtu = m.u64(0);
                if (mtu < 68 || mtu > 65535) {
                    throw new VhostUserException("NET_SET_MTU: " + Long.toUnsignedString(mtu) + " is outside 68..65535");
                }
                device.setMtu((int) mtu);
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
        return device.features() | (1L << F_PROTOCOL_FEATURES);
    }

    private long offeredProtocolFeatures() {
        return device.protocolFeatures() | SESSION_PROTOCOL_FEATURES;
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
        for (Ring ring : rings) {
            if (ring.started && f != ackedFeatures) {
                throw new VhostUserException("SET_FEATURES: features cannot change while rings run");
            }
        }
        if (!featuresSet || f != ackedFeatures) {
            LOG.log(Level.INFO, "{0}: features {1}", name, VirtioFeatures.list(f));
        }
        boolean first = !featuresSet;
        boolean hadProtocol = protocolFeaturesNegotiated();
        ackedFeatures = f;
        featuresSet = true;
        if (first || hadProtocol != protocolFeaturesNegotiated()) {
            // Without protocol features rings are enabled from the start (vhost-user.rst, "Ring states").
            for (Ring ring : rings) {
                if (!ring.started) {
                    ring.enabled = !protocolFeaturesNegotiated();
                }
            }
        }
        device.setFeatures(f & ~(1L << F_PROTOCOL_FEATURES));
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

    private static MappedMemory.Spec regionSpec(Message m, int at) {
        return new MappedMemory.Spec(m.u64(at), m.u64(at + 8), m.u64(at + 16), m.u64(at + 24));
    }

    private void setMemTable(Message m) {
        int n = m.u32(0);
        if (n < 1 || n > MAX_TABLE_REGIONS) {
            throw new VhostUserException("SET_MEM_TABLE: " + Integer.toUnsignedString(n) + " regions, expected 1.."
                    + MAX_TABLE_REGIONS);
        }
        if (m.size() != 8 + 32 * n) {
            throw new VhostUserException("SET_MEM_TABLE: " + n + " regions need " + (8 + 32 * n) + " bytes, got " + m.size());
        }
        List<MappedMemory.Spec> specs = new ArrayList<>();
        List<Fd> fds = new ArrayList<>();
        try {
            for (int i = 0; i < n; i++) {
                specs.add(regionSpec(m, 8 + 32 * i));
                fds.add(m.takeFd(i));
            }
            MappedMemory next = MappedMemory.of(specs, fds);
            replaceMemory(next, List.of(memory));
            LOG.log(Level.INFO, "{0}: memory table {1}", name, next.memory());
        } finally {
            fds.forEach(Fd::close); // the mappings keep the memory alive
        }
    }

    /**
     * Installs a new memory table. Running rings are stopped, restarted on the new table at the same indexes, and
     * only then is the old mapping released: no worker ever reads unmapped memory.
     */
    private void replaceMemory(MappedMemory next, List<AutoCloseable> retired) {
        List<Integer> running = new ArrayList<>();
        for (int i = 0; i < rings.length; i++) {
            if (rings[i].started) {
                stop(i);
                running.add(i);
            }
        }
        memory = next;
        try {
            for (int i : running) {
                start(i);
            }
        } finally {
            retired.forEach(BackendSession::closeQuietly);
        }
    }

    /** Starts ring {@code index} if it has everything it needs; rings lacking something start later. */
    private void start(int index) {
        Ring ring = rings[index];
        if (ring.started || ring.kick == null || !ring.addrSet || ring.num == 0 || memory.regionCount() == 0) {
            return;
        }
        GuestMemory g = memory.memory();
        int num = ring.num;
        MemorySegment desc = g.uva(ring.descUva, SplitRing.descTableBytes(num));
        MemorySegment avail = g.uva(ring.availUva, SplitRing.availBytes(num));
        MemorySegment used = g.uva(ring.usedUva, SplitRing.usedBytes(num));
        int usedIdx = Short.toUnsignedInt(used.get(LE16, SplitRing.USED_IDX));
        int base = ring.base;
        if (usedIdx != base) {
            // Chains between the used index and the frontend's avail index were in flight with a backend that went
            // away: take them again from the used index (TX may resend a few frames; no RX buffer is lost).
            LOG.log(Level.WARNING, "{0}: ring {1}: base {2} differs from used index {3}; resuming from the used index",
                    name, index, base, usedIdx);
            base = usedIdx;
        }
        DeviceQueue q = new DeviceQueue(g, num, desc, avail, used, ackedFeatures, base, usedIdx);
        device.startRing(index, q, ring.kick, ring.call, ring.enabled);
        if (ring.err != null) {
            device.setErr(index, ring.err);
        }
        ring.started = true;
        LOG.log(Level.INFO, "{0}: ring {1} started: size {2}, avail index {3}, {4}", name, index, num, base,
                ring.enabled ? "enabled" : "disabled");
    }

    private void stop(int index) {
        DeviceQueue q = device.stopRing(index);
        rings[index].started = false;
        rings[index].base = q.lastAvailIndex();
    }

    private void resetRings() {
        for (int i = 0; i < rings.length; i++) {
            if (rings[i].started) {
                stop(i);
            }
        }
    }

    private void teardown() {
        try {
            resetRings();
            device.reset();
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "{0}: stopping the device: {1}", name, e.toString());
        }
        for (Ring ring : rings) {
            closeQuietly(ring.kick);
            closeQuietly(ring.call);
            closeQuietly(ring.err);
            ring.kick = ring.call = ring.err = null;
        }
        memory.close();
        memory = MappedMemory.EMPTY;
        channel.close();
        LOG.log(Level.INFO, "{0}: session closed", name);
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
