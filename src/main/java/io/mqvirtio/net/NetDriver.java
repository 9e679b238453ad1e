package io.mqvirtio.net;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.Mmap;
import io.mqvirtio.vhostuser.Frontend;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.RingBase;
import io.mqvirtio.virtio.Rings;
import io.mqvirtio.virtio.SplitRing;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A userspace multiqueue virtio-net driver over vhost-user, in the manner of DPDK's virtio-user: it connects to a
 * backend's socket as the frontend, shares one memfd holding its rings and buffers (guest-physical addresses are
 * its own virtual addresses), sets up N queue pairs, and hands each to one application thread.
 *
 * <p>The control virtqueue is emulated here, as virtio-user does: {@link #setQueuePairs(int)} becomes
 * SET_VRING_ENABLE on both rings of each pair; RX-mode commands are acknowledged ({@link #setPromiscuous}).
 * Device status follows the spec's initialisation order when the backend has the STATUS protocol feature.
 *
 * <p>{@link #close()} may come from any thread while others use their pairs: see there.
 *
 * <pre>{@code
 * try (NetDriver nic = NetDriver.connect(Path.of("/tmp/vm0.sock"), NetDriver.Options.pairs(4))) {
 *     NetQueuePair q = nic.pair(0);                 // one per thread
 *     int sent = q.send(frame);                     // 1, or 0 when the TX ring is full
 *     q.awaitSend(100);                             // then: sleep until it has room (100 ms at most)
 *     int got = q.receive(buffers, lengths, 32);    // frames copied into buffers
 *     nic.setQueuePairs(2);                         // like ethtool -L combined 2
 * }
 * }</pre>
 */
public final class NetDriver implements AutoCloseable {
    private static final Logger LOG = System.getLogger(NetDriver.class.getName());

    /** Features the driver negotiates when the backend offers them (VERSION_1 is required). */
    static final long WANTED = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
            | VirtioFeatures.bit(VirtioNet.F_MQ) | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
            | VirtioFeatures.bit(VirtioNet.F_MTU) | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
            | VirtioFeatures.bit(VirtioNet.F_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM)
            | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) | VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
    /** {@link #WANTED} without the packed layout: for comparisons with the split one. */
    public static final long WANTED_SPLIT = WANTED & ~VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED);
    /** {@link #WANTED} without IN_ORDER. */
    public static final long WANTED_ANY_ORDER = WANTED & ~VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER);
    static final long WANTED_PROTOCOL = (1L << Protocol.PF_MQ) | (1L << Protocol.PF_REPLY_ACK) | (1L << Protocol.PF_STATUS)
            | (1L << Protocol.PF_LOG_SHMFD);
    /** Device status bits (VIRTIO 1.3, 2.1), set in this order as the driver initialises (3.1.1). */
    static final int ACKNOWLEDGE = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8;

    /**
     * @param pairs      queue pairs to set up (all start enabled)
     * @param ringSize   entries per ring (a power of two)
     * @param bufSize    bytes per buffer, header included (frames up to bufSize - 12)
     * @param timeoutMs  how long to wait for each backend reply (1 ms or more: every wait is bounded), and for all
     *                   the replies of {@link #connect}'s set-up together; on close, also how long to wait for the
     *                   pairs' threads to leave their calls and, in all, for the backend to stop the rings
     * @param features   features to negotiate when offered: a subset of {@link #WANTED} with VERSION_1 (the driver
     *                   speaks virtio 1.x with its 12-byte header only, and none of the features beyond WANTED)
     */
    public record Options(int pairs, int ringSize, int bufSize, int timeoutMs, long features) {
        public Options {
            if (pairs < 1 || pairs > VirtioNet.MAX_PAIRS) {
                throw new IllegalArgumentException("queue pairs must be 1.." + VirtioNet.MAX_PAIRS + ": " + pairs);
            }
            if (!SplitRing.isValidSize(ringSize)) {
                throw new IllegalArgumentException("ring size must be a power of two up to 32768: " + ringSize);
            }
            if (bufSize < 64 || bufSize > 65536) {
                throw new IllegalArgumentException("buffer size must be 64..65536: " + bufSize);
            }
            if (timeoutMs < 1) { // a negative one made each reply's wait endless (Channel: no limit), 0 none at all
                throw new IllegalArgumentException("timeout must be 1 ms or more: " + timeoutMs);
            }
            // Without VERSION_1 a backend that serves legacy drivers too (DPDK's vhost) takes the header as 10 bytes
            // (without MRG_RXBUF), every frame both ways 2 bytes off; a feature beyond WANTED changes what the
            // backend expects in ways the driver does not follow (HASH_REPORT a 20-byte header, ACCESS_PLATFORM
            // addresses through an IOTLB it never fills, NOTIFICATION_DATA kicks that carry data).
            if (!VirtioFeatures.has(features, VirtioFeatures.F_VERSION_1)) {
                throw new IllegalArgumentException("features must include VERSION_1 (bit 32): 0x" + Long.toHexString(features));
            }
            if ((features & ~WANTED) != 0) {
                throw new IllegalArgumentException("features the driver does not implement: "
                        + VirtioFeatures.list(features & ~WANTED) + " (it knows " + VirtioFeatures.list(WANTED) + ")");
            }
        }

        public static Options pairs(int pairs) {
            return new Options(pairs, 256, 2048, 5000, WANTED);
        }

        public Options withRingSize(int n) {
            return new Options(pairs, n, bufSize, timeoutMs, features);
        }

        public Options withFeatures(long f) {
            return new Options(pairs, ringSize, bufSize, timeoutMs, f);
        }
    }

    private final Frontend frontend;
    private final MemFd memfd;
    private final Mmap map;
    /** The scope of every segment of {@link #map} the rings and pairs use: see {@link #close()}. */
    private final Arena arena;
    private final List<NetQueuePair> pairs = new ArrayList<>();
    /** Pair i's eventfds (RX kick and call, TX kick and call, wake), made before the pair, which owns them after. */
    private final List<EventFd[]> pairFds = new ArrayList<>();
    private final int timeoutMs;
    private final long features;
    private final long protocolFeatures;
    private final int maxPairs;
    /**
     * Written under the driver's lock, read without it: {@link #pairFor} runs per frame on the pairs' threads, which
     * must not wait for a control request (a slow backend holds the lock for a timeout per reply, close for three).
     */
    private volatile int activePairs;
    private volatile boolean promiscuous = true;
    private boolean closed;
    /** What SET_FEATURES said at connect, and what the backend offered. */
    private long featuresSent;
    private long offeredFeatures;
    /** Per ring index: its descriptor, used and available addresses (guest-physical = our virtual ones). */
    private final List<long[]> ringAddrs = new ArrayList<>();
    /** The dirty log the backend writes into while {@link #setDirtyLog} is on, or null. */
    private MemFd dirtyLog;

    private NetDriver(Frontend frontend, MemFd memfd, Mmap map, Arena arena, int timeoutMs, long features,
                      long protocolFeatures, int maxPairs) {
        this.frontend = frontend;
        this.memfd = memfd;
        this.map = map;
        this.arena = arena;
        this.timeoutMs = timeoutMs;
        this.features = features;
        this.protocolFeatures = protocolFeatures;
        this.maxPairs = maxPairs;
    }

    /**
     * Connects to the backend at {@code socket} and sets up the queue pairs.
     *
     * @throws VhostUserException if the backend refuses, answers wrongly, lacks VERSION_1 or enough queue pairs,
     *                            or does not answer in time; nothing is left open then
     */
    public static NetDriver connect(Path socket, Options o) {
        Frontend fe = Frontend.connect(socket, o.timeoutMs());
        fe.deadlineIn(o.timeoutMs()); // the set-up's replies in all, not one timeout per request
        MemFd memfd = null;
        Mmap map = null;
        Arena arena = null;
        NetDriver d = null;
        try {
            long offered = fe.getFeatures();
            if (!VirtioFeatures.has(offered, VirtioFeatures.F_VERSION_1)) {
                throw new VhostUserException("the backend does not offer VERSION_1 (features 0x" + Long.toHexString(offered) + ")");
            }
            long pf = 0;
            if (VirtioFeatures.has(offered, Protocol.F_PROTOCOL_FEATURES)) {
                pf = fe.getProtocolFeatures() & WANTED_PROTOCOL;
                fe.setProtocolFeatures(pf);
                fe.useReplyAck((pf & (1L << Protocol.PF_REPLY_ACK)) != 0);
            }
            boolean status = (pf & (1L << Protocol.PF_STATUS)) != 0;
            if (status) {
                fe.setStatus(ACKNOWLEDGE);
                fe.setStatus(ACKNOWLEDGE | DRIVER);
            }
            long negotiated = offered & o.features() & ~(1L << Protocol.F_PROTOCOL_FEATURES);
            int max = 1;
            if ((pf & (1L << Protocol.PF_MQ)) != 0 && VirtioFeatures.has(negotiated, VirtioNet.F_MQ)) {
                long q = fe.getQueueNum();
                if (q < 1 || q > VirtioNet.MAX_PAIRS) {
                    throw new VhostUserException("GET_QUEUE_NUM answered " + Long.toUnsignedString(q) + " queue pairs");
                }
                max = (int) q;
            }
            if (o.pairs() > max) {
                throw new VhostUserException("the backend serves " + max + " queue pair" + (max == 1 ? "" : "s") + ", "
                        + o.pairs() + " asked");
            }
            if (o.pairs() == 1) {
                negotiated &= ~VirtioFeatures.bit(VirtioNet.F_MQ);
            }
            fe.setOwner();
            fe.setFeatures(negotiated | (offered & (1L << Protocol.F_PROTOCOL_FEATURES)));
            if (status) {
                fe.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK);
                if ((fe.getStatus() & FEATURES_OK) == 0) {
                    throw new VhostUserException("the backend did not accept features 0x" + Long.toHexString(negotiated));
                }
            }

            Rings.Layout layout = Rings.layout(o.ringSize(), negotiated);
            long bufBytes = (long) o.ringSize() * o.bufSize();
            long perPair = 2 * layout.totalBytes() + 2 * align(bufBytes);
            long size = perPair * o.pairs();
            memfd = MemFd.create("mqvirtio-driver", size);
            memfd.sealSize(); // the backend gets this file: it must not be able to shrink it under our mapping
            map = Mmap.shared(memfd, 0, size);
            // Everything the driver touches in the mapping is a view scoped to a shared arena (close() explains).
            arena = Arena.ofShared();
            MemorySegment mem = map.segment().reinterpret(arena, null);
            long base = mem.address();
            fe.setMemTable(List.of(new Frontend.Region(base, size, base, 0, memfd)));
            d = new NetDriver(fe, memfd, map, arena, o.timeoutMs(), negotiated, pf, o.pairs());
            d.featuresSent = negotiated | (offered & (1L << Protocol.F_PROTOCOL_FEATURES));
            d.offeredFeatures = offered;
            boolean mrg = VirtioFeatures.has(negotiated, VirtioNet.F_MRG_RXBUF);
            for (int p = 0; p < o.pairs(); p++) {
                long off = perPair * p;
                DriverRing[] q = new DriverRing[2];
                EventFd[] kick = new EventFd[2];
                EventFd[] call = new EventFd[2];
                EventFd[] fds = new EventFd[5];
                d.pairFds.add(fds);
                for (int r = 0; r < 2; r++) {
                    long ringOff = off + r * layout.totalBytes();
                    MemorySegment ring = mem.asSlice(ringOff, layout.totalBytes());
                    q[r] = Rings.driver(o.ringSize(), negotiated, ring);
                    kick[r] = fds[2 * r] = EventFd.create();
                    call[r] = fds[2 * r + 1] = EventFd.create();
                }
                fds[4] = EventFd.create();
                long rxBufs = off + 2 * layout.totalBytes();
                long txBufs = rxBufs + align(bufBytes);
                NetQueuePair qp = new NetQueuePair(p, q[0], q[1], kick[0], kick[1], call[0], call[1], fds[4],
                        mem.asSlice(rxBufs, bufBytes), base + rxBufs, mem.asSlice(txBufs, bufBytes), base + txBufs,
                        o.bufSize(), mrg, VirtioFeatures.has(negotiated, VirtioNet.F_CSUM),
                        VirtioFeatures.has(negotiated, VirtioNet.F_GUEST_CSUM));
                qp.watch(fe.socket());
                for (int r = 0; r < 2; r++) {
                    int index = 2 * p + r;
                    long ringAddr = base + off + r * layout.totalBytes();
                    fe.setVringNum(index, o.ringSize());
                    // a fresh ring: index 0, and for packed rings both wrap counters 1 (VIRTIO 1.3, 2.8.1)
                    fe.setVringBase(index, Rings.packed(negotiated) ? RingBase.PACKED_START.encode(true) : 0);
                    long[] a = {ringAddr + layout.descOffset(), ringAddr + layout.usedOffset(), ringAddr + layout.availOffset()};
                    d.ringAddrs.add(a);
                    fe.setVringAddr(index, a[0], a[1], a[2]);
                    fe.setVringCall(index, call[r]);
                    fe.setVringKick(index, kick[r]);
                }
                d.pairs.add(qp);
            }
            d.setQueuePairs(o.pairs());
            if (status) {
                fe.setStatus(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
            }
            // The RX rings were filled before the backend started them: tell it they are there.
            for (NetQueuePair qp : d.pairs) {
                qp.kickRx();
            }
            fe.noDeadline();
            LOG.log(Level.INFO, "connected to {0}: {1} queue pairs, features {2}", socket, o.pairs(),
                    VirtioFeatures.list(negotiated));
            return d;
        } catch (RuntimeException e) {
            if (d != null) {
                d.release(new boolean[0]); // no pair was handed out: none can be busy
            } else {
                if (arena != null) {
                    arena.close();
                }
                if (map != null) {
                    map.close();
                }
                if (memfd != null) {
                    memfd.close();
                }
                fe.close();
            }
            throw e;
        }
    }

    private static long align(long v) {
        return (v + 4095) & -4096L;
    }

    /** Negotiated virtio features. */
    public long features() {
        return features;
    }

    public long protocolFeatures() {
        return protocolFeatures;
    }

    /** Queue pairs set up (the most that {@link #setQueuePairs} can enable). */
    public int maxPairs() {
        return maxPairs;
    }

    public int activePairs() {
        return activePairs;
    }

    /** Pair {@code i}'s handle; use each from one thread at a time (another thread's call meanwhile is refused). */
    public NetQueuePair pair(int i) {
        return pairs.get(i);
    }

    /**
     * Changes the number of active queue pairs at run time (the control queue's VIRTIO_NET_CTRL_MQ, emulated):
     * pairs below {@code n} are enabled, the rest disabled on both rings. A disabled pair takes and delivers nothing.
     *
     * @throws io.mqvirtio.vhostuser.VhostUserException if the backend fails, goes away or has not answered every
     *                                                  ring within one timeout in all, part way (some rings may then
     *                                                  have changed and others not: close the driver)
     */
    public synchronized void setQueuePairs(int n) {
        if (n < 1 || n > maxPairs) {
            throw new IllegalArgumentException("queue pairs must be 1.." + maxPairs + ": " + n);
        }
        checkOpen();
        if (n < activePairs) {
            // Fewer: published before any pair is disabled, so that pairFor never chooses one that takes nothing,
            // neither while the replies come nor after one that fails part way (the old count stayed, for good)
            activePairs = n;
        }
        // The replies in all within one timeout, as the set-up's and close's: this holds the driver's lock, which
        // close waits for, and a backend answering each ring just inside the timeout held both for one per ring.
        frontend.deadlineIn(timeoutMs);
        try {
            for (int p = 0; p < maxPairs; p++) {
                boolean on = p < n;
                NetQueuePair qp = pairs.get(p);
                if (!on) {
                    qp.enabled = false; // stop using it before the backend stops serving it
                }
                frontend.setVringEnable(2 * p, on);
                frontend.setVringEnable(2 * p + 1, on);
                if (on && !qp.enabled) {
                    qp.enabled = true;
                    qp.enabledAgain(); // a thread waiting on it while it was disabled
                }
            }
        } finally {
            frontend.noDeadline();
        }
        activePairs = n;
    }

    /**
     * Has the backend log every page it writes, as QEMU has it while it migrates a VM (vhost-user.rst, "Migration"):
     * a log (a sparse memfd covering the driver's addresses, which are its guest-physical ones), LOG_ALL, and each
     * ring's used-ring logging; off undoes the last two. For measuring what logging costs a backend while traffic
     * runs (the bench's {@code --ab dirty-log}): the driver itself cannot be migrated.
     *
     * @throws UnsupportedOperationException if the backend offers no dirty logging (LOG_ALL and LOG_SHMFD)
     * @throws io.mqvirtio.vhostuser.VhostUserException if the backend fails, goes away or has not answered every
     *                                                  request within one timeout in all, part way (LOG_ALL may then
     *                                                  still be on in the backend: close the driver)
     */
    public synchronized void setDirtyLog(boolean on) {
        checkOpen();
        if ((protocolFeatures & (1L << Protocol.PF_LOG_SHMFD)) == 0 || (offeredFeatures & (1L << Protocol.F_LOG_ALL)) == 0) {
            throw new UnsupportedOperationException("the backend offers no dirty logging (LOG_ALL with LOG_SHMFD)");
        }
        if (on == (dirtyLog != null)) {
            return;
        }
        frontend.deadlineIn(timeoutMs); // the replies in all within one timeout, as setQueuePairs' (the lock)
        try {
            switchDirtyLog(on);
        } finally {
            frontend.noDeadline();
        }
    }

    private void switchDirtyLog(boolean on) {
        if (on) {
            long end = map.segment().address() + map.size();
            long bytes = (Long.divideUnsigned(end, 4096) / 64 + 1) * 8;
            MemFd log = MemFd.create("mqvirtio-dirty-log", bytes);
            try {
                frontend.setLogBase(log, bytes, 0);
                frontend.setFeatures(featuresSent | (1L << Protocol.F_LOG_ALL));
                for (int i = 0; i < ringAddrs.size(); i++) {
                    long[] a = ringAddrs.get(i);
                    frontend.setVringAddr(i, Protocol.VRING_F_LOG, a[0], a[1], a[2], a[1]);
                }
            } catch (RuntimeException e) {
                log.close();
                throw e;
            }
            dirtyLog = log;
        } else {
            frontend.setFeatures(featuresSent);
            for (int i = 0; i < ringAddrs.size(); i++) {
                long[] a = ringAddrs.get(i);
                frontend.setVringAddr(i, 0, a[0], a[1], a[2], 0);
            }
            dirtyLog.close(); // the backend keeps its own mapping until a new log or the end of the session
            dirtyLog = null;
        }
    }

    /**
     * The control queue's RX-mode command (VIRTIO_NET_CTRL_RX_PROMISC), emulated as virtio-user does: vhost-user has
     * no message for it and backends deliver every frame to the device, so the command is acknowledged and recorded.
     */
    public synchronized boolean setPromiscuous(boolean on) {
        checkOpen();
        promiscuous = on;
        return true;
    }

    public boolean isPromiscuous() {
        return promiscuous;
    }

    /**
     * The pair a frame should use so that a flow stays on one pair (in the spirit of the kernel's XPS/RSS): a hash
     * of its IP addresses and TCP/UDP ports, modulo the active pairs. Frames that are not IP go to pair 0.
     */
    public int pairFor(MemorySegment frame) {
        return FlowHash.of(frame) % activePairs();
    }

    private void checkOpen() {
        if (closed) {
            throw new IllegalStateException("driver closed");
        }
    }

    /**
     * Stops the pairs, then every ring (GET_VRING_BASE, so the backend lets go of our memory), then disconnects and
     * frees the memory. A backend that is already gone, or answers slowly or not at all, is no obstacle: the rings
     * get one timeout in all (and the reply in progress when it ends its own). May be called from any thread while
     * others use their pairs, and waits one timeout at most for them, whatever their threads do; so close returns
     * within about three timeouts (four while another thread's {@link #setQueuePairs} or {@link #setDirtyLog}, which
     * get one in all, holds the driver's lock):
     *
     * <ol>
     * <li>every pair is shut: its next operation throws {@code IllegalStateException("driver closed")}, a thread
     *     waiting in {@link NetQueuePair#awaitReady} (awaitReceive, awaitSend) is woken;
     * <li>close waits, one timeout at most, for each pair's thread to leave the operation it is in (see
     *     NetQueuePair's enter/leave for how this costs one CAS per burst); not at all for the pair whose call it
     *     is made from (a FrameWriter's), which is left as one whose thread did not leave;
     * <li>the shared arena that scopes every segment of the mapping the driver handed out is closed: the JVM
     *     handshakes with every thread, so from then on any access through those segments throws
     *     IllegalStateException instead of reaching the mapping, even from a pair whose thread did not leave (a
     *     FrameWriter still running) or from a TX buffer a writer kept past its call; only then is the memory
     *     unmapped. (A shared arena's close fails while a native call holds one of its segments, a writer blocked
     *     in read(2) into its buffer: the memory then stays mapped, logged, rather than be unmapped under the call);
     * <li>the descriptors of the pairs whose thread left are closed; those of a pair whose thread did not are left
     *     open (logged): a late kick must not write to a number the kernel has given to another file.
     * </ol>
     */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        closed = true;
        for (NetQueuePair qp : pairs) {
            qp.shut();
        }
        long left = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        boolean[] busy = new boolean[pairs.size()];
        for (int p = 0; p < pairs.size(); p++) {
            if (pairs.get(p).isInside(Thread.currentThread())) {
                // close called from inside the pair's own call (its FrameWriter): it cannot leave while we wait
                busy[p] = true;
                LOG.log(Level.WARNING, "closing: called from inside a call on queue pair {0}; the pair''s eventfds "
                        + "stay open", p);
            } else if (!pairs.get(p).awaitLeft(left)) {
                busy[p] = true;
                LOG.log(Level.WARNING, "closing: the thread of queue pair {0} did not leave its call within {1} ms; "
                        + "the pair''s eventfds stay open", p, timeoutMs);
            }
        }
        stopRings();
        release(busy);
    }

    /** GET_VRING_BASE for every ring, within one timeout in all: a backend that answers slowly gets no more. */
    private void stopRings() {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        int rings = 2 * pairs.size();
        try {
            for (int r = 0; r < rings; r++) {
                if (System.nanoTime() - deadline > 0) {
                    LOG.log(Level.DEBUG, "closing: {0} of {1} rings stopped within {2} ms; disconnecting", r, rings,
                            timeoutMs);
                    return;
                }
                frontend.getVringBase(r);
            }
        } catch (VhostUserException e) {
            LOG.log(Level.DEBUG, "closing: {0}", e.getMessage());
        }
    }

    /** Frees what close (or a failed connect) can free; {@code busy[p]}: pair p's thread may still use it. */
    private void release(boolean[] busy) {
        frontend.close();
        memfd.close(); // the mapping keeps the memory; the backend has its own descriptor
        if (dirtyLog != null) {
            dirtyLog.close();
            dirtyLog = null;
        }
        for (int p = 0; p < pairFds.size(); p++) {
            if (p < busy.length && busy[p]) {
                continue;
            }
            if (p < pairs.size()) {
                pairs.get(p).close();
            } else {
                for (EventFd e : pairFds.get(p)) { // connect failed before the pair was made
                    if (e != null) {
                        e.close();
                    }
                }
            }
        }
        try {
            arena.close();
        } catch (IllegalStateException e) {
            LOG.log(Level.WARNING, "closing: a native call holds the driver''s memory ({0}); its {1} bytes stay "
                    + "mapped", e.getMessage(), map.size());
            return;
        }
        map.close();
    }
}
