package io.mqvirtio.net;

import io.mqvirtio.capture.QueueCapture;
import io.mqvirtio.device.Worker;
import io.mqvirtio.device.WorkerHandler;
import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.TimerFd;
import io.mqvirtio.vhostuser.WarningLimit;
import io.mqvirtio.virtio.ChainBurst;
import io.mqvirtio.virtio.DescriptorChain;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.RingLog;
import io.mqvirtio.virtio.VirtioFeatures;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * The net side of one queue pair's worker (the role of a vhost thread): the {@link WorkerHandler} a device-neutral
 * {@link Worker} runs, which owns the thread, its epoll, the command channel and the idle policy. It owns RX ring 2i,
 * TX ring 2i+1 and port i; each round moves at most a budget of frames per direction, so one busy direction cannot
 * starve the other.
 *
 * <p>TX: pop a chain, gather its readable buffers into an iovec, one {@code send} (writev on a TAP), push used.
 * RX: pop as many chains as a frame may need (one without MRG_RXBUF), gather their writable buffers, one
 * {@code receive} (readv on a TAP), set {@code num_buffers}, push the chains the frame used and give the rest back.
 * No copy in between for TAP.
 *
 * <p>The control thread reaches it only through {@link #call} ({@link Worker#call}: between rounds, bounded, never
 * after its caller gave up). Nothing on the data path is shared with another pair.
 *
 * <p>Nothing a peer controls makes this thread wait: kick eventfds are read with RWF_NOWAIT, the port is
 * non-blocking, and a write to a call or error eventfd that the frontend made blocking and filled is released by
 * the eventfd watchdog ({@link EventFd#signal()}), after which that ring is broken (the frontend is hostile). A port's errors (a TAP
 * that is down or gone) drop the frame and are counted; they never break a ring.
 */
final class QueuePairWorker implements WorkerHandler {
    private static final Logger LOG = System.getLogger(QueuePairWorker.class.getName());
    private static final long TOKEN_TX_KICK = 1, TOKEN_RX_KICK = 2, TOKEN_PORT = 3, TOKEN_UPKEEP = 4;
    /**
     * A port change the port refused ({@link Port#setActive}: a TUNSETQUEUE that failed) is tried again after this,
     * doubling up to {@link #PORT_RETRY_MAX_NANOS} while it fails: each try takes the kernel's rtnl lock, which the
     * whole host's network configuration shares.
     */
    static final long PORT_RETRY_NANOS = TimeUnit.SECONDS.toNanos(1), PORT_RETRY_MAX_NANOS = TimeUnit.SECONDS.toNanos(32);
    /**
     * The port's fd, edge-triggered. EPOLLOUT: a send that would block gives its chain back (a batching port keeps the
     * frames of a flush it had no room for), and the guest, waiting for its frames to be used, may never kick again;
     * the edge when the TAP's send buffer drains retries it (vhost-net polls its socket for that), and until then TX
     * takes nothing. A TAP raises that edge only when asked, by a poll or a write that found it full
     * ({@link #waitForRoom}), so it costs no wake-ups otherwise.
     */
    private static final int PORT_EVENTS = Epoll.EPOLLIN | Epoll.EPOLLOUT | Epoll.EPOLLET;
    /**
     * A kick fd, edge-triggered: a wake-up per write of the frontend's, however its counter reads afterwards. A
     * frontend may hand us an eventfd in semaphore mode (EFD_SEMAPHORE, fixed when it was made): each read takes one
     * from its counter, so one write of 2^40 kept it readable for good, and level-triggered the worker woke, drained
     * one and ran an empty round at 100 % of a core. The session refuses such a kick where the kernel names the mode
     * (in /proc's fdinfo, as recent kernels do); this bounds it everywhere else. No kick is lost: a write after a wake-up
     * raises the next edge, and registering a kick that is readable already reports it once.
     */
    private static final int KICK_EVENTS = Epoll.EPOLLIN | Epoll.EPOLLET;
    static final int BUDGET = 64;
    /**
     * Chains of several buffers (anything {@link DeviceRing#popBurst} leaves to {@code pop}) a TX burst reads ahead at
     * a time (their descriptors and frames' first lines) when the port reads frames. Measured, when every chain went
     * by pop, with read-ahead switched on and off every 0.7 s in one run (docs/performance.md): 1500-byte frames
     * copied out +38 to +41 % (median of paired windows) while the two CPUs were far apart, -5 to -8 % while they
     * were close; 64-byte frames unchanged; with a port that does not read frames, -3.5 %, so then nothing is read
     * ahead. One-buffer chains come by bursts, whose frames {@link ChainBurst#touch} reads ahead.
     */
    static final int READ_AHEAD = 32;
    private static final int MAX_RX_CHAINS = 64;
    /** How long a control thread waits for the worker to answer a command (it normally takes microseconds). */
    static final long COMMAND_TIMEOUT_NANOS = TimeUnit.SECONDS.toNanos(10);
    /**
     * A command that finds the worker in a port's control call ({@link #portCall}: a TAP's TUNSETQUEUE, TUNSETOFFLOAD,
     * reopen, each waiting for the kernel's rtnl lock, which the host holds as long as its network configuration
     * takes: a network namespace of thousands of devices deleted) waits this many command timeouts in all, said in
     * the log, before the device is declared dead: the worker is waiting for the host, not stuck.
     */
    static final int PORT_CALL_TIMEOUTS = 12;
    private static final String PORT_CALL = "a port change (a TAP's ioctl waits for the host's rtnl lock)";
    /** Port errors logged in full per worker before they are only counted, and how often the count is logged. */
    private static final long PORT_ERROR_LOG_NANOS = TimeUnit.SECONDS.toNanos(10);
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final MemorySegment ALL = MemorySegment.NULL.reinterpret(Long.MAX_VALUE);

    final int pair;
    private final Port port;
    private final boolean readsFrames;
    /** {@link Port#hostWritesHeaders}: RX headers are checked against the negotiated features. */
    private final boolean checkRxHeaders;
    /** The thread, its epoll, its commands and its idle policy: device-neutral. */
    private final Worker<QueuePairWorker> loop;
    private final long commandTimeoutNanos;
    private boolean workDone;   // a burst of this round moved frames
    final QueueCounters rxCounters = new QueueCounters();
    final QueueCounters txCounters = new QueueCounters();
    private final String name;
    /**
     * The device's allowance for what its workers log about the rings (shared by its pairs, one per VM): a frontend
     * can break a ring, restart it (a new kick fd) and have it broken again in a loop, a line each time, into the log
     * every VM shares.
     */
    private final WarningLimit warnings;

    // ---- state below is owned by the worker thread ----
    private DeviceRing rx;
    private DeviceRing tx;
    private EventFd rxKick;
    private EventFd txKick;
    private EventFd rxCall;
    private EventFd txCall;
    private EventFd rxErr;
    private EventFd txErr;
    private boolean rxEnabled;
    private boolean rxBroken;
    private boolean txBroken;
    private boolean txEnabled;
    private boolean portActive;
    private long rxLoggedSeen; // the rings' page marks already counted
    private long txLoggedSeen;
    private boolean portReadable;
    private boolean mrgRxbuf;
    private int rxFrameNeed = VirtioNet.HDR_SIZE + 1518;  // the largest frame the negotiated features allow
    /**
     * What an RX frame's virtio-net header may say, by the negotiated GUEST_* features (VIRTIO 1.3 5.1.6.4.1: flags
     * zero without GUEST_CSUM, gso_type NONE unless its feature was negotiated): the flags allowed, and one bit per
     * gso_type allowed (the ECN bit apart).
     */
    private int rxFlagsAllowed;
    private int rxGsoAllowed = 1 << VirtioNet.GSO_NONE;
    private boolean rxEcnAllowed;
    private int rxSmallNeed = VirtioNet.HDR_SIZE + 1518;  // an MTU-sized frame: what a receive gathers chains for
    /** Spill space for frames larger than an MTU, and the parking place of a frame waiting for RX buffers. */
    private final MemorySegment overflow = Arena.ofAuto().allocate(VirtioNet.HDR_SIZE + VirtioNet.MAX_GSO_FRAME, 64);
    private long pendingLen;
    private final DescriptorChain txChain = new DescriptorChain(IoVec.IOV_MAX);
    private final ChainBurst txChains = new ChainBurst();
    private final DescriptorChain[] rxChains = new DescriptorChain[MAX_RX_CHAINS];
    // RX buffers popped as a burst (one-buffer writable chains), used from rb on, rbCount in all
    private final ChainBurst rxChainBurst = new ChainBurst();
    private int rb;
    private int rbCount;
    private final IoVec iov = new IoVec(IoVec.IOV_MAX);
    // a TX burst's frames queued in a batching port, and the burst's counts
    private final long[] txQueuedBytes = new long[BUDGET];
    private final long[] txResults = new long[BUDGET];
    private int txQueued;
    /**
     * The port had no room (a send that would block, or a flush that kept frames): TX takes nothing from the ring
     * until the port's fd reports EPOLLOUT (or an error). Not on any other event: a TAP with frames to read reports
     * EPOLLIN at each re-arm, and a guest that posts no RX buffers leaves them there.
     */
    private boolean txBlocked;
    /** The frames {@link #txQueued} counts are ones the port kept from a flush that found no room: they go first. */
    private boolean txHeld;
    private long txSent;
    private long txBytes;
    private long txDropped;
    private long txMalformed;
    private final MemorySegment numBuffers = Arena.ofAuto().allocate(2);
    /** The pair's capture ({@code serve --capture}), or null: read once per TX burst and per RX frame. */
    private volatile QueueCapture capture;

    /** Fires every {@link Port#upkeepNanos} for a port that asks for upkeep (a TAP's), else null. */
    private final TimerFd upkeepTimer;

    // ---- port errors: counted always, logged in part ----
    private long portErrorLoggedAt;
    private long portErrorsUnlogged;
    private boolean portErrorLogged;

    QueuePairWorker(String name, int pair, Port port, boolean busyPoll, long pollNanos, int cpu) {
        this(name, pair, port, busyPoll, pollNanos, cpu, COMMAND_TIMEOUT_NANOS, new WarningLimit(name));
    }

    QueuePairWorker(String name, int pair, Port port, boolean busyPoll, long pollNanos, int cpu, long commandTimeoutNanos,
                    WarningLimit warnings) {
        this.name = name;
        this.warnings = warnings;
        this.pair = pair;
        this.port = port;
        this.readsFrames = port.readsFrames();
        this.checkRxHeaders = port.hostWritesHeaders();
        this.commandTimeoutNanos = commandTimeoutNanos;
        this.loop = new Worker<>(name + "-qp" + pair, this, new Worker.Idle(busyPoll, pollNanos), cpu, commandTimeoutNanos,
                PORT_CALL_TIMEOUTS * commandTimeoutNanos);
        for (int i = 0; i < rxChains.length; i++) {
            rxChains[i] = new DescriptorChain(IoVec.IOV_MAX);
        }
        TimerFd timer = null;
        try {
            if (port.readFd() >= 0) {
                // Edge-triggered: with no RX buffers we stop reading, and must not be woken again and again meanwhile.
                loop.register(port.readFd(), PORT_EVENTS, TOKEN_PORT);
            }
            long every = port.upkeepNanos();
            timer = every > 0 ? TimerFd.periodic(every) : null;
            if (timer != null) {
                // its own descriptor in the worker's epoll: nothing is added to a round, an idle worker wakes once a
                // period
                loop.register(timer.fd(), Epoll.EPOLLIN, TOKEN_UPKEEP);
            }
        } catch (RuntimeException e) {
            // out of descriptors (EMFILE) at the timerfd: the thread never starts, and its epoll and eventfd close
            // (they leaked, two descriptors for each failed start; the port is its opener's)
            if (timer != null) {
                timer.close();
            }
            loop.close();
            throw e;
        }
        upkeepTimer = timer;
    }

    /** Frees what a worker that never started holds (its device failed to start): not its port, the device's. */
    void closeUnstarted() {
        loop.close();
        if (upkeepTimer != null) {
            upkeepTimer.close();
        }
    }

    long threadId() {
        return loop.threadId();
    }

    /** How the port moves this pair's frames ({@link Port#ioMethod}); any thread. */
    String ioMethod(boolean isRx) {
        return port.ioMethod(isRx);
    }

    /** Starts copying the frames this pair moves into {@code c} (null: stops); the caller closes the old one. */
    QueueCapture capture(QueueCapture c) {
        QueueCapture old = capture;
        capture = c;
        return old;
    }

    void start() {
        loop.start();
    }

    String workerName() {
        return loop.name();
    }

    /** Runs {@code command} on this pair's thread (see {@link Worker#call}: bounded, withdrawn when it times out). */
    <T> T call(Function<QueuePairWorker, T> command) {
        return loop.call(command);
    }

    /** What a port's errno usually means on a TAP, for the log. */
    private static String hint(RuntimeException e) {
        if (!(e instanceof ErrnoException x)) {
            return "";
        }
        return switch (x.errno()) {
            case ErrnoException.EIO -> " (is the TAP's link down?)";
            case ErrnoException.EINVAL -> " (a frame shorter than an Ethernet header, or a bad virtio-net header)";
            case 77 -> " (the TAP device is gone: deleted under us)"; // EBADFD
            default -> "";
        };
    }

    /**
     * Signals a peer's eventfd. False if the write stuck on a counter the peer filled and was released by the
     * watchdog (the caller breaks the ring that eventfd belongs to).
     */
    private static boolean notifyPeer(EventFd fd) {
        try {
            return fd.signal();
        } catch (ErrnoException | IllegalStateException e) {
            return true; // a descriptor that is not an eventfd any more, or closed: nothing to notify
        }
    }

    /** Signals ring {@code isRx}'s call eventfd (if any); breaks the ring if the frontend made that impossible. */
    private void signalCall(boolean isRx) {
        EventFd call = isRx ? rxCall : txCall;
        if (call == null) {
            return;
        }
        (isRx ? rxCounters : txCounters).add(QueueCounters.NOTIFICATIONS, 1);
        if (!notifyPeer(call)) {
            if (isRx) {
                rxCall = null;
            } else {
                txCall = null;
            }
            broken(isRx, isRx ? rxErr : txErr, new VirtqueueException("the call eventfd was filled to its limit with "
                    + "O_NONBLOCK cleared: the frontend blocked this ring's notifications"));
        }
    }

    // ---- commands (run on the worker thread) ----

    Void startRing(boolean isRx, DeviceRing q, EventFd kick, EventFd call, boolean enabled) {
        if (isRx) {
            rx = q;
            rxLoggedSeen = q.pagesLogged();
            rxKick = kick;
            rxCall = call;
            rxEnabled = enabled;
            loop.register(kick.fd(), KICK_EVENTS, TOKEN_RX_KICK);
            portReadable = true; // frames may have queued while no ring ran
        } else {
            q.deviceReadsOnly(); // a TX buffer is only read (DPDK's packed indirect tables mark their header WRITE)
            tx = q;
            txLoggedSeen = q.pagesLogged();
            txKick = kick;
            txCall = call;
            txEnabled = enabled;
            loop.register(kick.fd(), KICK_EVENTS, TOKEN_TX_KICK);
            // A wait for room from before the ring stopped does not outlive it: the restarted ring tries at once
            // (still no room: it waits again). Its edge may never come (a send buffer too small ever to poll
            // writable), and the ring then waited for the next upkeep, up to a second, with the TAP long drained.
            txBlocked = false;
        }
        // A backend that died may have published used entries without signalling them: have the driver look.
        signalCall(isRx);
        updatePortActive();
        return null;
    }

    DeviceRing stopRing(boolean isRx) {
        DeviceRing q;
        if (isRx) {
            q = rx;
            if (pendingLen > 0) {
                landParkedFrame(q);
            }
            if (rxKick != null && !rxBroken) {
                loop.unregister(rxKick.fd());
            }
            rxBroken = false;
            rx = null;
            rxKick = null;
            rxCall = null;
            rxErr = null;
            rxEnabled = false;
        } else {
            q = tx;
            if (txKick != null && !txBroken) {
                loop.unregister(txKick.fd());
            }
            txBroken = false;
            tx = null;
            txKick = null;
            txCall = null;
            txErr = null;
            txEnabled = false;
        }
        updatePortActive();
        return q;
    }

    /**
     * Logs ring {@code isRx}'s writes into guest memory from now on (null: stop), its pending dirty bits flushed into
     * the log it had. When this returns, the ring no longer touches the previous log.
     */
    Void setLog(boolean isRx, RingLog log) {
        DeviceRing q = isRx ? rx : tx;
        if (q != null) {
            q.setLog(log);
        }
        return null;
    }

    Void enable(boolean isRx, boolean on) {
        if (isRx) {
            rxEnabled = on;
            portReadable = true;
        } else {
            txEnabled = on;
        }
        updatePortActive();
        return null;
    }

    /**
     * A new call eventfd (QEMU sends one after the kick, and swaps them when the guest masks a vector). Used entries
     * may have been published while there was none, or signalled on the old one: one notification on the new fd
     * makes sure the driver looks (a spurious notification is harmless; a lost one stalls the queue, since with
     * EVENT_IDX the device signals only when it crosses the driver's used_event).
     */
    Void setCall(boolean isRx, EventFd call) {
        if (isRx) {
            rxCall = call;
        } else {
            txCall = call;
        }
        if ((isRx ? rx : tx) != null && !(isRx ? rxBroken : txBroken)) {
            signalCall(isRx);
        }
        return null;
    }

    Void setErr(boolean isRx, EventFd err) {
        if (isRx) {
            rxErr = err;
        } else {
            txErr = err;
        }
        return null;
    }

    Void setFeatures(long features, int mtu) {
        mrgRxbuf = VirtioFeatures.has(features, VirtioNet.F_MRG_RXBUF);
        boolean gso = VirtioFeatures.has(features, VirtioNet.F_GUEST_TSO4) || VirtioFeatures.has(features, VirtioNet.F_GUEST_TSO6)
                || VirtioFeatures.has(features, VirtioNet.F_GUEST_UFO);
        rxFrameNeed = VirtioNet.HDR_SIZE + (gso ? VirtioNet.MAX_GSO_FRAME : mtu + 14 + 4);
        rxSmallNeed = Math.min(rxFrameNeed, VirtioNet.HDR_SIZE + mtu + 14 + 4);
        rxFlagsAllowed = VirtioFeatures.has(features, VirtioNet.F_GUEST_CSUM)
                ? VirtioNet.HDR_F_NEEDS_CSUM | VirtioNet.HDR_F_DATA_VALID : 0;
        rxGsoAllowed = 1 << VirtioNet.GSO_NONE
                | (VirtioFeatures.has(features, VirtioNet.F_GUEST_TSO4) ? 1 << VirtioNet.GSO_TCPV4 : 0)
                | (VirtioFeatures.has(features, VirtioNet.F_GUEST_UFO) ? 1 << VirtioNet.GSO_UDP : 0)
                | (VirtioFeatures.has(features, VirtioNet.F_GUEST_TSO6) ? 1 << VirtioNet.GSO_TCPV6 : 0);
        rxEcnAllowed = VirtioFeatures.has(features, VirtioNet.F_GUEST_ECN);
        try {
            portCall();
            port.setFeatures(features);
        } catch (RuntimeException e) {
            portError(true, e); // a TAP that is gone: the offloads no longer matter
        } finally {
            loop.slowCallDone();
        }
        return null;
    }

    /**
     * Sends a frame the device made itself (header included: a RARP announce after a migration) through the port, if
     * it is active. Where the port has no room (a TAP whose send buffer the host holds full) it is kept, behind the
     * frames the port keeps, and sent when the port has room, as TX frames are: it used to be lost then, unsaid. One is
     * kept: a newer one replaces it, and one not sent (replaced, the port inactive when it comes or before it went, a
     * reset) counts as a TX drop.
     */
    Void inject(MemorySegment frame) {
        if (!portActive) {
            txCounters.add(QueueCounters.DROPS, 1); // as a frame of a disabled ring (a detached TAP queue refuses it)
            return null;
        }
        if (announce != null) {
            txCounters.add(QueueCounters.DROPS, 1); // replaced before it could go
        }
        announce = frame;
        sendAnnounce();
        return null;
    }

    /** The device's own frame waiting for room in the port (sent before the ring's next frames), or null. */
    private MemorySegment announce;

    /** Sends {@link #announce} unless the port is still without room; a port that refuses it drops it (counted). */
    private void sendAnnounce() {
        if (txBlocked || txHeld) {
            return; // no room yet: tried again at the port's edge or the upkeep, which clear txBlocked
        }
        iov.clear();
        iov.add(announce);
        long n;
        try {
            n = port.send(iov);
        } catch (ErrnoException e) {
            n = 0;
            portError(false, e); // refused (a link down): dropped, counted
        }
        if (n == -1) {
            waitForRoom();
            return;
        }
        announce = null;
    }

    /** Drops a kept {@link #announce} (counted): the port went inactive, or the device was reset. */
    private void dropAnnounce() {
        if (announce != null) {
            announce = null;
            txCounters.add(QueueCounters.DROPS, 1);
        }
    }

    /**
     * The device was reset (its frontend went away or asked for it): both rings are stopped, and nothing of the
     * last session may reach the next one, neither a parked frame nor what the port still holds.
     */
    Void reset() {
        pendingLen = 0;
        discardHeldTx();
        dropAnnounce();
        try {
            portCall();
            port.reset();
        } catch (RuntimeException e) {
            portError(true, e);
        } finally {
            loop.slowCallDone();
        }
        return null;
    }

    /** The TAP queue is attached while either ring of the pair runs enabled (ethtool -L turns both off together). */
    private void updatePortActive() {
        boolean active = (rx != null && rxEnabled) || (tx != null && txEnabled);
        if (active != portActive) {
            portActive = active;
            portReadable = true;
            if (!active) {
                discardHeldTx(); // as any frame for a port that is not active (a detached TAP queue refuses them)
                dropAnnounce();
            }
            try {
                portCall();
                port.setActive(active);
                // only an attach that worked says the TAP is back: a detach of a queue that never attached does nothing
                if (portStateFailing && active) {
                    portBack();
                }
            } catch (RuntimeException e) {
                // e.g. a TAP deleted under us (TUNSETQUEUE answers EINVAL for good): the rings stay as they are;
                // frames to it are dropped and counted. Counted and logged once until a change succeeds again, not
                // once per change: a guest toggling its pairs would count a frame error for each, and the log said
                // "frame dropped" with a hint about runt frames.
                portRetryIn = PORT_RETRY_NANOS;
                portRetryAt = System.nanoTime() + portRetryIn;
                if (!portStateFailing) {
                    portStateFailing = true;
                    portRetries = 0;
                    (active ? txCounters : rxCounters).add(QueueCounters.ERRORS, 1);
                    LOG.log(Level.WARNING, "{0}: cannot {1} the port''s queue (is the TAP device gone?); the rings go on: {2}",
                            workerName(), active ? "attach" : "detach", e.getMessage());
                }
            } finally {
                loop.slowCallDone();
            }
        }
    }

    /**
     * The worker enters a port's control call ({@link Port#setActive}, {@link Port#setFeatures}, {@link Port#upkeep},
     * {@link Port#reset}), which may wait for a lock of the host's: a command waiting meanwhile gets
     * {@link #PORT_CALL_TIMEOUTS} command timeouts (see {@link Worker#slowCall}); {@link Worker#slowCallDone} after it.
     * Never on the data path.
     */
    private void portCall() {
        loop.slowCall(PORT_CALL);
    }

    /** The port refused a change of {@link #updatePortActive} and has attached nothing since (counted and logged once). */
    private boolean portStateFailing;
    /** The change the port refused is tried again at this time, then after twice the wait, while it fails. */
    private long portRetryAt;
    private long portRetryIn;
    private long portRetries;

    /** The port's change works again after a failure: said once (the failure was counted and logged once). */
    private void portBack() {
        portStateFailing = false;
        LOG.log(Level.INFO, "{0}: the port''s queue {1} again{2}", workerName(), portActive ? "attached" : "detached",
                portRetries == 0 ? "" : " (after " + portRetries + " retries)");
    }

    /**
     * The upkeep timer fired: the port looks after what the host changed (a TAP created again: a new descriptor to
     * watch), and a port change that failed is tried again when its wait is over. A TX blocked on a port with no room
     * tries again too (one write, or one submission of what the port kept): its EPOLLOUT edge may never come. A host
     * may set a TAP's send buffer to 1 to 3 bytes (TUNSETSNDBUF takes any size above 0): a write fits whenever nothing
     * of ours is in flight, but poll never finds the TAP writable (less than half the buffer in use, a count that
     * starts at 1), so the edge never comes, and the guest, waiting for its frames to be used, kicks no more.
     */
    private void upkeep() {
        upkeepTimer.drain();
        txBlocked = false; // the round after this tries TX again; still no room: it waits for the edge (or this) again
        watchPort();
        if (txHeld) {
            return; // frames held for the port's descriptor: they go (or fail) first, at its next edge
        }
        int before = port.readFd();
        try {
            portCall();
            if (port.upkeep()) {
                try {
                    loop.unregister(before); // usually gone with its file already
                } catch (RuntimeException e) {
                    // closed: its entry went with it
                }
                portUnwatched = true;
                watchPort();
            }
        } catch (RuntimeException e) {
            logPortError(true, e); // not counted: no frame was lost to it; the next upkeep tries again
        } finally {
            loop.slowCallDone();
        }
        if (portStateFailing && System.nanoTime() - portRetryAt >= 0) {
            portRetries++;
            try {
                portCall();
                port.setActive(portActive);
                if (portActive) {
                    portBack();
                } else {
                    portStateFailing = false; // detached: nothing to say (the line said it could not be)
                }
            } catch (RuntimeException e) {
                portRetryIn = Math.min(PORT_RETRY_MAX_NANOS, portRetryIn * 2);
                portRetryAt = System.nanoTime() + portRetryIn;
            } finally {
                loop.slowCallDone();
            }
        }
    }

    /**
     * The port's descriptor changed (a TAP queue reopened) and is not watched yet: registered now, which reports what
     * is ready, as at start. A registration the kernel refused (ENOMEM, ENOSPC: the user's epoll watches) is tried
     * again at each upkeep; before, the port was never watched again: RX never woke for its frames, and a TX waiting
     * for room waited for the upkeep.
     */
    private void watchPort() {
        if (!portUnwatched) {
            return;
        }
        try {
            loop.register(port.readFd(), PORT_EVENTS, TOKEN_PORT);
            portUnwatched = false;
            portReadable = true;
        } catch (RuntimeException e) {
            logPortError(true, e); // not counted: no frame was lost to it
        }
    }

    /** The port's descriptor is not in the worker's epoll (its registration failed): {@link #watchPort} retries. */
    private boolean portUnwatched;

    /**
     * The port failed (a TAP that is down answers EIO, a runt frame or a bad header EINVAL, a deleted TAP EBADFD):
     * the frame is dropped and counted as an error of that queue, as vhost-net does; the ring goes on. Logged the
     * first time, then at most once per 10 s with the count in between.
     */
    private void portError(boolean isRx, RuntimeException e) {
        (isRx ? rxCounters : txCounters).add(QueueCounters.ERRORS, 1);
        logPortError(isRx, e);
    }

    /** {@link #portError}'s line, for an error the caller counts. */
    private void logPortError(boolean isRx, RuntimeException e) {
        long now = System.nanoTime();
        if (!portErrorLogged || now - portErrorLoggedAt >= PORT_ERROR_LOG_NANOS) {
            LOG.log(Level.WARNING, "{0} {1}: port error, frame dropped{2}: {3}{4}", workerName(), isRx ? "RX" : "TX",
                    portErrorsUnlogged == 0 ? "" : " (" + portErrorsUnlogged + " more since the last report)",
                    e.getMessage(), hint(e));
            portErrorLogged = true;
            portErrorLoggedAt = now;
            portErrorsUnlogged = 0;
        } else {
            portErrorsUnlogged++;
        }
    }

    // ---- the work (on the worker thread) ----

    @Override
    public void ready(long token, int events) {
        if (token == TOKEN_TX_KICK) {
            if (txKick != null) {
                drainKick(txKick);
                txCounters.add(QueueCounters.KICKS, 1);
            }
        } else if (token == TOKEN_RX_KICK) {
            if (rxKick != null) {
                drainKick(rxKick);
                rxCounters.add(QueueCounters.KICKS, 1);
            }
        } else if (token == TOKEN_PORT) {
            portReadable = true;
            if ((events & (Epoll.EPOLLOUT | Epoll.EPOLLERR | Epoll.EPOLLHUP)) != 0) {
                txBlocked = false; // room again (or an error, which the next write reports)
            }
        } else if (token == TOKEN_UPKEEP) {
            upkeep();
        }
    }

    /** One round: a TX burst, then an RX burst (each at most a budget of frames, so neither starves the other). */
    @Override
    public int work(boolean poll) {
        workDone = false;
        boolean more = false;
        if (announce != null) {
            if (txHeld && !txBlocked) {
                flushHeldTx(); // what the port kept from before the announce goes before it
            }
            sendAnnounce(); // then the announce: the ring's frames wait behind it (it waits if the port still has no room)
        }
        if (tx != null && !txBroken) {
            more |= txBurst(poll);
        } else if (txHeld && !txBlocked) {
            flushHeldTx();
        }
        if (port.readFd() == Port.POLL) {
            portReadable = true;
        }
        if (rx != null && !rxBroken && rxEnabled && portReadable) {
            more |= rxBurst(poll);
        }
        return (more ? MORE : 0) | (workDone ? MOVED : 0);
    }

    /** Clears a kick eventfd (never waits, whatever the frontend did to its flags). */
    private static void drainKick(EventFd kick) {
        try {
            kick.drain();
        } catch (RuntimeException e) {
            // not readable as an eventfd: the kick still woke us, which is all it is for
        }
    }

    /**
     * Moves up to a budget of frames from the TX ring to the port; true if more may be waiting. One-buffer chains (a
     * frame whose header and frame share one buffer: what Linux and DPDK send) come a burst at a time
     * ({@link DeviceRing#popBurst}); any other chain is popped on its own.
     */
    private boolean txBurst(boolean poll) {
        DeviceRing q = tx;
        int done = 0;
        txSent = 0;
        txBytes = 0;
        txDropped = 0;
        txMalformed = 0;
        boolean blocked = false;
        QueueCapture cap = capture;
        int batch = Math.min(port.batch(), BUDGET);
        // A port in this process takes a burst with one call (paired windows, ours->ours 1500 B with the CPUs near:
        // 1.155x split, 1.104x packed; level at 64 B and with the CPUs far apart, docs/performance.md)
        boolean bursts = batch == 0 && port.sendsBursts();
        int generalPops = 0;
        try {
            if (txBlocked) {
                return false; // no room in the port since the last try: wait for its EPOLLOUT edge, take nothing
            }
            if (txHeld) {
                flushTx(); // what the port kept goes out first, in order
                blocked = txHeld;
            }
            while (!blocked && done < BUDGET) {
                int n = q.popBurst(txChains, BUDGET - done, false);
                if (n > 0) {
                    if (readsFrames) {
                        txChains.touch(0);
                    }
                    int taken = 0;
                    long bytes;
                    if (bursts && cap == null && txEnabled && portActive
                            && (bytes = txChains.bytesBeyond(0, n, VirtioNet.HDR_SIZE)) >= 0) {
                        port.sendBurst(txChains, 0, n); // takes them all
                        taken = n;
                        txSent += n;
                        txBytes += bytes;
                    } else {
                        while (taken < n && sendFrame(iov, txChains.hostAddress(taken),
                                Integer.toUnsignedLong(txChains.length(taken)), cap, batch)) {
                            taken++;
                        }
                    }
                    q.completeBurst(txChains, 0, taken, 0);
                    done += taken;
                    if (taken < n) {
                        q.giveBack(n - taken);
                        blocked = true;
                        break;
                    }
                    if (txHeld) {
                        blocked = true; // a flush found no room: the port keeps its frames, nothing more is taken
                        break;
                    }
                    continue;
                }
                if (!txChains.stoppedAtOther()) {
                    break; // nothing more available: no chain for pop either
                }
                if (readsFrames && generalPops % READ_AHEAD == 0 && q.available() > 1) {
                    q.readAhead(READ_AHEAD);
                }
                if (!q.pop(txChain)) {
                    break;
                }
                generalPops++;
                DescriptorChain c = txChain;
                iov.clear();
                for (int i = 0; i < c.readableCount(); i++) {
                    iov.addRaw(c.hostAddress(i), Integer.toUnsignedLong(c.length(i)));
                }
                if (!sendFrame(iov, 0, 0, cap, batch)) {
                    q.giveBack(1);
                    blocked = true;
                    break;
                }
                q.complete(c, 0);
                done++;
                if (txHeld) {
                    blocked = true;
                    break;
                }
            }
            if (!txHeld) {
                flushTx();
            }
            if (done > 0) {
                q.publish();
                if (q.isLogging()) {
                    txLoggedSeen = countLogged(q, txCounters, txLoggedSeen);
                }
                // No call fd yet: keep the decision for later (see setCall), or a notification would be lost for good.
                if (txCall != null && q.needsNotification()) {
                    signalCall(false);
                }
            }
            workDone |= done > 0;
            if (txBroken) {
                return false;
            }
            if (blocked || txHeld) {
                waitForRoom();
                return false;
            }
            if (done == BUDGET) {
                return true;
            }
            if (poll) {
                q.disableKicks();
                return false;
            }
            return q.enableKicks();
        } catch (VirtqueueException e) {
            publishBeforeBreak(q, done, false);
            broken(false, txErr, e);
            return false;
        } catch (RuntimeException | InternalError e) {
            // InternalError: the JVM's answer to SIGBUS, e.g. a frontend that shrank its memory file under us
            publishBeforeBreak(q, done, false);
            broken(false, txErr, new VirtqueueException("fault while processing the ring: " + e, e));
            return false;
        } finally {
            if (!txHeld) {
                flushTx(); // frames taken before a ring broke still go out (or are kept by the port, in order)
            }
            if (txHeld && !txBlocked) {
                waitForRoom(); // kept by that last flush: the edge brings them out (flushHeldTx, if the ring broke)
            }
            countTx();
        }
    }

    /** Adds a burst's counts: once per burst, one release store per counter, not per frame. */
    private void countTx() {
        txCounters.addBurst(txSent, txBytes, txDropped, txMalformed);
    }

    /**
     * Frames the port kept from a flush go out when it has room even if their ring broke or stopped meanwhile: their
     * chains were used, so they are the host's to send, as a burst's frames before a bad chain are.
     */
    private void flushHeldTx() {
        txSent = 0;
        txBytes = 0;
        txDropped = 0;
        txMalformed = 0;
        flushTx();
        if (txHeld) {
            waitForRoom();
        }
        countTx();
    }

    /**
     * One TX frame to the port: queued for the burst's flush, or sent now. The frame is gathered in {@code frame}
     * when {@code address} is 0; otherwise it lies in one buffer, {@code length} bytes at {@code address} (a burst's
     * chain), and {@code frame} is scratch for a port that needs an iovec (one that copies takes the frame from
     * there: 0.96-0.99x the worker's CPU per frame at 64 B into a TAP through io_uring, paired windows). False when the port would block: the
     * caller gives the chain back. A frame of a disabled ring or a port that is not active is consumed and dropped;
     * one without room for the header is an error; both counted.
     */
    private boolean sendFrame(IoVec frame, long address, long length, QueueCapture cap, int batch) {
        if (txHeld) {
            return false; // the port keeps frames it had no room for: this one waits behind them
        }
        if (!txEnabled || !portActive) {
            txDropped++; // a started but disabled ring is consumed, not sent
            return true;
        }
        long total = address != 0 ? length : frame.totalBytes();
        if (total < VirtioNet.HDR_SIZE) {
            txMalformed++; // no room for even the header
            return true;
        }
        if (cap != null) {
            if (address != 0) {
                frame.clear();
                frame.addRaw(address, length);
            }
            cap.sent(frame, VirtioNet.HDR_SIZE);
        }
        long payload = total - VirtioNet.HDR_SIZE;
        if (batch > 0 && (address != 0 ? port.queue(address, length, frame) : port.queue(frame))) {
            txQueuedBytes[txQueued++] = payload; // copied: the chain completes now, the write comes later
            if (txQueued == batch) {
                flushTx();
            }
            return true;
        }
        flushTx(); // what is queued goes first
        if (txHeld) {
            return false;
        }
        long n;
        try {
            n = address != 0 ? port.send(address, length, frame) : port.send(frame);
        } catch (ErrnoException e) {
            n = 0; // the host refused this frame (link down, runt, bad header): dropped, counted
            portError(false, e);
        }
        if (n == -1) {
            return false;
        }
        if (n > 0) {
            txSent++;
            txBytes += payload;
        }
        return true;
    }

    /**
     * A send would block: asks the port's fd for an edge when it has room again (polled now, which a TAP answers by
     * arming its wake-up, or with EPOLLOUT if it drained meanwhile). Without it, a guest that waits for its frames to
     * be used kicks no more and the TX ring stalls for good.
     */
    private void waitForRoom() {
        if (port.readFd() < 0) {
            return; // a port without a descriptor never blocks (the loopback drops instead)
        }
        txBlocked = true;
        if (portUnwatched) {
            return; // not in the epoll (its registration failed): no edge to arm; the upkeep watches it, TX tries again
        }
        try {
            loop.rearm(port.readFd(), PORT_EVENTS, TOKEN_PORT);
        } catch (RuntimeException e) {
            txBlocked = false; // no edge to wait for: the next round tries again
            portError(false, e);
        }
    }

    /**
     * Sends what the port queued ({@link Port#queue}) and counts the results as {@link Port#send}'s would be: a frame
     * the host refused (link down, runt, bad header) is a port error. Frames the port had no room for (a TAP's send
     * buffer the host limited) it keeps, in order, as a send that would block gives its chain back: they are
     * {@link #txHeld}, first out when the port has room again, and counted then. (Their chains were completed when
     * the port copied them.) A port that reports EAGAIN as a result instead dropped that frame.
     */
    private void flushTx() {
        int n = txQueued;
        if (n == 0) {
            return;
        }
        txQueued = 0;
        txHeld = false;
        int got;
        try {
            got = port.flush(txResults);
        } catch (RuntimeException e) {
            port.discard();
            txDropped += n; // a port whose flush itself fails: the batch is lost, counted, the ring goes on
            portError(false, e);
            return;
        }
        got = Math.max(0, Math.min(n, got));
        for (int i = 0; i < got; i++) {
            long r = txResults[i];
            if (r > 0) {
                txSent++;
                txBytes += txQueuedBytes[i];
            } else if (r == -ErrnoException.EAGAIN) {
                txDropped++;
            } else if (r < 0) {
                portError(false, new ErrnoException("TAP write", (int) -r));
            }
        }
        if (got < n) {
            System.arraycopy(txQueuedBytes, got, txQueuedBytes, 0, n - got);
            txQueued = n - got;
            txHeld = true;
        }
    }

    /** Drops the frames the port kept from a flush (counted as dropped): the device was reset, or its port inactive. */
    private void discardHeldTx() {
        txBlocked = false;
        if (!txHeld) {
            return;
        }
        try {
            port.discard();
        } catch (RuntimeException e) {
            portError(false, e);
        }
        txCounters.add(QueueCounters.DROPS, txQueued);
        txQueued = 0;
        txHeld = false;
    }

    /**
     * Moves up to a budget of frames from the port into the RX ring; true if more may be waiting.
     *
     * <p>The frame's length is unknown until it is read, and a GSO frame may be 64 KiB, so the worker pops only as
     * many chains as an MTU-sized frame needs and puts a spill buffer of this worker's at the end of the iovec: an
     * ordinary frame lands in guest memory with one {@code readv} and no copy; a larger one spills, and the spilled
     * part is copied into further chains. If the driver has not posted enough buffers for it, the whole frame is
     * parked in the spill buffer until it does (nothing is dropped, no chain is held); a frame that could never fit
     * (more than the whole ring, or than one frame may span) is dropped instead of waiting for good.
     *
     * <p>Buffers that are one chain of one buffer each, each big enough for the largest frame the negotiated features
     * allow (a driver without GSO that posts MTU-sized buffers: DPDK's, ours), come a burst at a time
     * ({@link DeviceRing#popBurst}): one read straight into each ({@link Port#receive(long, long, IoVec)}), nothing
     * to spill, one completion; measured against the chain-by-chain path with paired windows, TAP into our driver:
     * 0.935-0.977x the worker's CPU per frame. Any other buffer (smaller, several descriptors, mergeable pieces) goes
     * chain by chain as above.
     *
     * <p>Waiting for buffers means waiting for a kick: chains given back unused do not count as new ones, so a ring
     * whose buffers cannot take the waiting frame costs nothing until the driver adds more.
     */
    private boolean rxBurst(boolean poll) {
        DeviceRing q = rx;
        rb = 0; // what a burst cut short by a broken ring left is not given back: that ring pops nothing more
        rbCount = 0;
        int done = 0;
        long packets = 0;
        long bytes = 0;
        long errors = 0;
        long drops = 0;
        boolean waitBuffers = false;
        try {
            // Frames dropped or refused count against the budget as delivered ones do: a host flooding the queue with
            // frames the guest can never take (a TAP whose MTU it raised) must not hold the worker here, its TX ring
            // starved and its commands unanswered.
            while (done + drops + errors < BUDGET) {
                if (pendingLen > 0) {
                    long len = pendingLen;
                    int r = deliverPending(q);
                    if (r < 0) {
                        drops++; // can never fit: waiting for it would stop this ring for good
                        continue;
                    }
                    if (r == 0) {
                        waitBuffers = true;
                        break;
                    }
                    packets++;
                    bytes += len - VirtioNet.HDR_SIZE;
                    done++;
                    continue;
                }
                // A burst of one-buffer chains, each big enough for the largest frame this ring may get: one
                // read into each, no spill, one completion. Anything else goes chain by chain below.
                if (rb == rbCount) {
                    rb = 0;
                    rbCount = q.popBurst(rxChainBurst, (int) (BUDGET - done - drops - errors), true);
                }
                if (rb < rbCount && Integer.toUnsignedLong(rxChainBurst.length(rb)) >= rxFrameNeed) {
                    long len = receiveInto(q, rb);
                    if (len == RX_STOP) {
                        break;
                    }
                    if (len == RX_CUT) {
                        drops++; // the same buffer takes the next frame
                        continue;
                    }
                    if (len == RX_REFUSED || len < VirtioNet.HDR_SIZE) {
                        errors++; // the same buffer takes the next frame
                        continue;
                    }
                    rb++;
                    packets++;
                    bytes += len - VirtioNet.HDR_SIZE;
                    done++;
                    continue;
                }
                giveBackRxBurst(q); // a buffer a frame could outgrow: chain by chain from here
                iov.clear();
                int k = gather(q, 0, rxSmallNeed);
                long cap = gathered;
                if (k == 0) {
                    waitBuffers = true;
                    break;
                }
                // Room for the largest frame this ring may get and one byte more, so that a larger one shows (a TAP
                // cuts a frame to what it is given and says only what it wrote).
                long spillRoom = Math.min(Math.max(rxFrameNeed - cap, 0) + 1, overflow.byteSize());
                iov.add(overflow, 0, spillRoom);
                long len;
                try {
                    len = port.receive(iov);
                } catch (ErrnoException e) {
                    q.giveBack(k);
                    portError(true, e);
                    portReadable = false; // the next edge of the port's fd says when to try again
                    break;
                }
                if (len < 0) {
                    q.giveBack(k);
                    portReadable = false;
                    break;
                }
                if (len < VirtioNet.HDR_SIZE) {
                    markReceived(q, k, len);
                    q.giveBack(k);
                    errors++;
                    continue;
                }
                // the header lies in the first chain's buffers (gather takes none with less room than a header)
                if (checkRxHeaders
                        && !rxHeaderAllowed(iovAddress(VirtioNet.HDR_FLAGS), iovAddress(VirtioNet.HDR_GSO_TYPE))) {
                    markReceived(q, k, Math.min(len, cap));
                    q.giveBack(k);
                    errors++;
                    continue;
                }
                if (len > rxFrameNeed) {
                    markReceived(q, k, cap);
                    q.giveBack(k); // larger than the device's MTU allows, and cut: dropped, as a NIC drops it
                    drops++;
                    continue;
                }
                if (len > cap) {
                    long spill = len - cap;
                    int k2 = mrgRxbuf ? gather(q, k, spill) : k;
                    long extra = mrgRxbuf ? gathered : 0;
                    if (extra < spill) {
                        markReceived(q, k, cap); // dropped or parked: the chains go back holding its first part
                        if (!mrgRxbuf || gatherExhausted) {
                            q.giveBack(k2); // larger than what this driver can ever give one frame
                            drops++;
                            continue;
                        }
                        // park the whole frame: the spill moves up behind the part the chains hold
                        MemorySegment.copy(overflow, 0, overflow, cap, spill);
                        long at = 0;
                        for (int i = 0; i < k; i++) {
                            at += rxChains[i].readWritten(0, overflow.asSlice(at, rxChains[i].writableBytes()));
                        }
                        q.giveBack(k2);
                        pendingLen = len;
                        waitBuffers = true;
                        break;
                    }
                    long at = 0;
                    for (int i = k; i < k2 && at < spill; i++) {
                        at += rxChains[i].writeTo(0, overflow.asSlice(at, Math.min(spill - at, rxChains[i].writableBytes())));
                    }
                    k = k2;
                }
                completeFrame(q, k, len);
                packets++;
                bytes += len - VirtioNet.HDR_SIZE;
                done++;
            }
            giveBackRxBurst(q);
            if (done > 0) {
                q.publish();
                if (q.isLogging()) {
                    rxLoggedSeen = countLogged(q, rxCounters, rxLoggedSeen);
                }
                if (rxCall != null && q.needsNotification()) {
                    signalCall(true);
                }
            } else if (q.isLogging()) {
                q.publish(); // nothing to publish: the marks of buffers written and given back go out
            }
            workDone |= done > 0;
            if (rxBroken) {
                return false;
            }
            if (waitBuffers) {
                return !poll && q.enableKicksForMore();
            }
            // Buffers to spare, or no frame to put in them: a kick for more buffers would wake this worker for
            // nothing, once per receive of the driver's (it posts its buffers again as it takes frames). RX kicks
            // stay off until the ring runs short (enableKicksForMore above), as vhost-net's handle_rx does.
            q.disableKicks();
            return done + drops + errors == BUDGET;
        } catch (VirtqueueException e) {
            publishBeforeBreak(q, done, true);
            broken(true, rxErr, e);
            return false;
        } catch (RuntimeException | InternalError e) {
            publishBeforeBreak(q, done, true);
            broken(true, rxErr, new VirtqueueException("fault while processing the ring: " + e, e));
            return false;
        } finally {
            rxCounters.addBurst(packets, bytes, drops, errors);
        }
    }

    /** The byte {@link #receiveInto} last looked at in a buffer the port left empty (kept, so the look is made). */
    private byte rxProbe;

    /** {@link #receiveInto}: the port has nothing, or failed (the burst's buffers from here were given back). */
    private static final long RX_STOP = Long.MIN_VALUE;
    /** {@link #receiveInto}: the frame was larger than the ring may get, and cut; dropped, the buffer stays. */
    private static final long RX_CUT = Long.MIN_VALUE + 1;
    /** {@link #receiveInto}: a frame whose header the guest may not get ({@link #rxHeaderAllowed}), counted. */
    private static final long RX_REFUSED = Long.MIN_VALUE + 2;

    /**
     * Whether the guest may get a frame whose header's flags and gso_type lie at these addresses (in guest memory,
     * just read into), checked for a port whose host writes them ({@link Port#hostWritesHeaders}): a TAP writes them
     * from the frame (a partial checksum: NEEDS_CSUM; a GSO frame: its type) as far as the TAP's offloads allow, and
     * those are the device's, not the queue's: any holder of one of its queues (the host) can turn them on with
     * TUNSETOFFLOAD, after ours. A guest without GUEST_CSUM would take NEEDS_CSUM's partial checksum for a bad one
     * (VIRTIO 1.3 5.1.6.4.1: the device sets flags to zero), one without GUEST_TSO4 a GSO frame for one frame: such a
     * frame is dropped (the caller counts an error, against the round's budget), logged in part. DATA_VALID (a
     * checksum the host checked) a TAP sets whatever its offloads, for any frame the kernel took as checked (bridged
     * from a NIC or a veth): without GUEST_CSUM it is cleared and the frame goes on (its checksum is right; the guest
     * checks it itself).
     */
    private boolean rxHeaderAllowed(long flagsAt, long gsoAt) {
        int flags = ALL.get(ValueLayout.JAVA_BYTE, flagsAt) & 0xff;
        int gsoType = ALL.get(ValueLayout.JAVA_BYTE, gsoAt) & 0xff;
        if ((flags & ~rxFlagsAllowed) == 0 && gsoType == VirtioNet.GSO_NONE) {
            return true; // the usual case
        }
        int type = gsoType & ~VirtioNet.GSO_ECN;
        if ((flags & ~(rxFlagsAllowed | VirtioNet.HDR_F_DATA_VALID)) == 0 && type < 32
                && (rxGsoAllowed >>> type & 1) != 0 && ((gsoType & VirtioNet.GSO_ECN) == 0 || rxEcnAllowed)) {
            if ((flags & ~rxFlagsAllowed) != 0) {
                ALL.set(ValueLayout.JAVA_BYTE, flagsAt, (byte) (flags & rxFlagsAllowed)); // DATA_VALID, cleared
            }
            return true;
        }
        logPortError(true, new IllegalStateException(String.format("the host handed a frame whose virtio-net header "
                + "the guest did not negotiate (flags 0x%x, gso_type 0x%x; is another holder of the TAP setting "
                + "TUNSETOFFLOAD?)", flags, gsoType)));
        return false;
    }

    /** Where byte {@code at} of what the last receive into {@link #iov} wrote lies (in its first entries). */
    private long iovAddress(int at) {
        long k = at;
        int i = 0;
        while (k >= iov.length(i)) {
            k -= iov.length(i++);
        }
        return iov.address(i) + k;
    }

    /**
     * Receives one frame into buffer {@code i} of the RX burst, which can hold the largest frame this ring may get (so
     * nothing spills), and completes it: its length, a length below the header's (the buffer stays for the next
     * frame), {@link #RX_CUT} for a frame larger than the ring may get (the buffer stays too), or
     * {@link #RX_STOP} when the port had nothing or failed.
     */
    private long receiveInto(DeviceRing q, int i) {
        long host = rxChainBurst.hostAddress(i);
        long room = Integer.toUnsignedLong(rxChainBurst.length(i));
        long len;
        try {
            // One byte more than the largest frame this ring may get, so that a larger one shows: a TAP cuts a frame
            // to what it is given and says only what it wrote (a host whose TAP has a larger MTU than the device).
            if (room > rxFrameNeed) {
                len = port.receive(host, rxFrameNeed + 1, iov);
            } else {
                iov.clear();
                iov.addRaw(host, room);
                iov.add(overflow, 0, 1);
                len = port.receive(iov);
            }
        } catch (ErrnoException e) {
            giveBackRxBurst(q);
            portError(true, e);
            portReadable = false; // the next edge of the port's fd says when to try again
            return RX_STOP;
        }
        if (len < 0) {
            if (room > rxFrameNeed) {
                // The read straight into the buffer tells an empty queue by poll, without errno (IoVec.read): a read
                // that failed because the frontend took the buffer's memory away (EFAULT: the kernel drops the
                // frame) and left the queue empty reads the same. A look at the buffer tells: memory taken away
                // faults here (SIGBUS, an InternalError), and the ring breaks, as at any touch of such memory.
                rxProbe = ALL.get(ValueLayout.JAVA_BYTE, host);
            }
            giveBackRxBurst(q);
            portReadable = false;
            return RX_STOP;
        }
        if (len < VirtioNet.HDR_SIZE || len > rxFrameNeed) {
            if (q.isLogging()) {
                q.markWritten(rxChainBurst.guestAddress(i), Math.min(len, room)); // the buffer stays, written
            }
            // shorter than the header; or larger than the device's MTU allows, and cut: dropped, as a NIC drops it
            return len < VirtioNet.HDR_SIZE ? len : RX_CUT;
        }
        if (checkRxHeaders && !rxHeaderAllowed(host + VirtioNet.HDR_FLAGS, host + VirtioNet.HDR_GSO_TYPE)) {
            if (q.isLogging()) {
                q.markWritten(rxChainBurst.guestAddress(i), len); // the buffer stays, written
            }
            return RX_REFUSED;
        }
        QueueCapture cap = capture;
        if (cap != null) {
            iov.clear();
            iov.addRaw(host, room);
            cap.received(iov, len, VirtioNet.HDR_SIZE);
        }
        // inside the written header, marked with it; before the completion: a fault here (the memory taken away
        // since the receive) leaves the buffer unused, not used with a header the device never finished
        ALL.set(LE16, host + VirtioNet.HDR_NUM_BUFFERS, (short) 1);
        q.completeBurst(rxChainBurst, i, 1, (int) len);
        if (q.isLogging()) {
            q.markWritten(rxChainBurst.guestAddress(i), len);
        }
        return len;
    }

    /** Gives back the RX burst's buffers not used yet (the last chains popped). */
    private void giveBackRxBurst(DeviceRing q) {
        if (rb < rbCount) {
            q.giveBack(rbCount - rb);
        }
        rb = 0;
        rbCount = 0;
    }

    /**
     * Pops chains into {@code rxChains[from..]} until their writable bytes reach {@code need} (one chain without
     * MRG_RXBUF), adding their writable buffers to the iovec; sets {@link #gathered} to those bytes and returns the
     * index after the last chain popped. Buffers a driver marked read-only are never written. Sets
     * {@link #gatherExhausted} when it stopped short for a reason more buffers cannot change: the chains one frame
     * may span, the iovec, or the whole ring (its entries, which a chain of several descriptors takes several of)
     * were used up.
     *
     * @throws VirtqueueException for a chain whose writable part cannot hold even the virtio-net header (VIRTIO 1.3,
     *                            5.1.6.3.1: the driver MUST post buffers at least that large), or has more buffers
     *                            than one receive takes
     */
    private int gather(DeviceRing q, int from, long need) {
        int k = from;
        long cap = 0;
        boolean iovFull = false;
        while (cap < need && k < rxChains.length && !iovFull && (mrgRxbuf || k == from) && q.pop(rxChains[k])) {
            DescriptorChain c = rxChains[k];
            if (c.writableBytes() < VirtioNet.HDR_SIZE) {
                throw new VirtqueueException("RX chain at head " + c.head() + " has " + c.writableBytes()
                        + " writable bytes, less than the " + VirtioNet.HDR_SIZE + "-byte virtio-net header");
            }
            // A chain is in the iovec whole or not at all (the last entry is kept for the spill buffer, which shows
            // a frame larger than the ring may get): of one cut short, the frame's bytes beyond its part in the
            // iovec would land in the spill buffer while completeFrame counts them in the chain, and the guest got
            // a frame with its own stale bytes in it.
            if (iov.count() + c.writableCount() > iov.capacity() - 1) {
                if (iov.count() == 0) {
                    throw new VirtqueueException("RX chain at head " + c.head() + " has " + c.writableCount()
                            + " writable buffers, more than the " + (iov.capacity() - 1) + " one receive takes");
                }
                q.giveBack(1);
                iovFull = true;
                break;
            }
            for (int i = c.readableCount(); i < c.count(); i++) {
                iov.addRaw(c.hostAddress(i), Integer.toUnsignedLong(c.length(i)));
            }
            cap += c.writableBytes();
            k++;
        }
        gathered = cap;
        gatherExhausted = cap < need && (k == rxChains.length || iovFull || slotsOf(k) >= q.size());
        return k;
    }

    /**
     * The ring entries the first {@code k} chains of {@link #rxChains} take. When they are every entry of the ring,
     * the driver has none left to post more with, and a frame must not wait for good (counting chains, a ring of
     * chains of several descriptors never got there).
     */
    private int slotsOf(int k) {
        int slots = 0;
        for (int i = 0; i < k; i++) {
            slots += rxChains[i].slots();
        }
        return slots;
    }

    private long gathered;
    private boolean gatherExhausted;

    /** The frame of {@code len} bytes is in chains 0..k-1: push those it fills, set num_buffers, give back the rest. */
    private void completeFrame(DeviceRing q, int k, long len) {
        QueueCapture cap = capture;
        if (cap != null) {
            cap.received(rxChains, k, len, VirtioNet.HDR_SIZE);
        }
        long left = len;
        int used = 0;
        while (used < k && (left > 0 || used == 0)) {
            left -= Math.min(left, rxChains[used++].writableBytes());
        }
        // inside what chain 0's mark covers; before the completions, as in receiveInto
        numBuffers.set(LE16, 0, (short) used);
        rxChains[0].writeTo(VirtioNet.HDR_NUM_BUFFERS, numBuffers);
        left = len;
        for (int i = 0; i < used; i++) {
            long take = Math.min(left, rxChains[i].writableBytes());
            q.complete(rxChains[i], (int) take);
            if (q.isLogging()) {
                markWritten(q, rxChains[i], take);
            }
            left -= take;
        }
        q.giveBack(k - used);
    }

    /** Adds the page marks ring {@code q} logged since {@code seen} to its counters; returns the new total. */
    private static long countLogged(DeviceRing q, QueueCounters c, long seen) {
        long now = q.pagesLogged();
        if (now != seen) {
            c.add(QueueCounters.DIRTY_PAGES, now - seen);
        }
        return now;
    }

    /**
     * While migrating: a receive wrote {@code bytes} into the first {@code k} chains of {@link #rxChains}, which go
     * back to the ring (a frame dropped, refused or parked). Their buffers stay the driver's until a frame is
     * completed in them, but the bytes are in guest memory: unmarked, the destination's copy of those pages
     * differed from the source's (a frame completed in them later marks only what it wrote).
     */
    private void markReceived(DeviceRing q, int k, long bytes) {
        if (!q.isLogging()) {
            return;
        }
        long left = bytes;
        for (int i = 0; i < k && left > 0; i++) {
            long n = Math.min(left, rxChains[i].writableBytes());
            markWritten(q, rxChains[i], n);
            left -= n;
        }
    }

    /** While migrating: the first {@code bytes} of the chain's writable buffers were written (marked dirty). */
    private static void markWritten(DeviceRing q, DescriptorChain c, long bytes) {
        long left = bytes;
        for (int i = c.readableCount(); i < c.count() && left > 0; i++) {
            long n = Math.min(left, Integer.toUnsignedLong(c.length(i)));
            q.markWritten(c.guestAddress(i), n);
            left -= n;
        }
    }

    /**
     * The ring stops with a frame parked for its buffers (at a migration's switch-over, or a reset): the driver may
     * have posted them since the worker last looked (their kick not yet read), so the frame is delivered now if it
     * fits, published before GET_VRING_BASE reads where the ring stopped (and so moves with the guest); otherwise, or
     * on a ring that cannot take it, it is dropped and counted: the ring's next life may not take it.
     */
    private void landParkedFrame(DeviceRing q) {
        long len = pendingLen;
        boolean landed = false;
        if (q != null && !rxBroken && rxEnabled) {
            try {
                if (deliverPending(q) > 0) {
                    q.publish();
                    landed = true;
                    rxCounters.add(QueueCounters.PACKETS, 1);
                    rxCounters.add(QueueCounters.BYTES, len - VirtioNet.HDR_SIZE);
                    if (q.isLogging()) {
                        rxLoggedSeen = countLogged(q, rxCounters, rxLoggedSeen);
                    }
                    if (rxCall != null && q.needsNotification()) {
                        signalCall(true);
                    }
                }
            } catch (RuntimeException | InternalError e) { // a ring the driver broke: the frame is dropped
                q.discardUnpublished(); // not counted in the base GET_VRING_BASE reads next: the driver never saw it
                warnings.warn(LOG, "{0} qp{1} RX: parked frame not delivered at stop: {2}", name, pair, e.getMessage());
            }
        }
        pendingLen = 0;
        if (!landed) {
            rxCounters.add(QueueCounters.DROPS, 1);
        }
    }

    /**
     * Copies the parked frame into chains once the driver has posted enough: 1 when delivered, 0 if the driver has
     * not posted enough yet, -1 if it never can (the frame is dropped then).
     */
    private int deliverPending(DeviceRing q) {
        iov.clear();
        int k = gather(q, 0, pendingLen);
        if (gathered < pendingLen) {
            q.giveBack(k);
            if (gatherExhausted) {
                pendingLen = 0;
                return -1;
            }
            return 0;
        }
        long at = 0;
        for (int i = 0; i < k && at < pendingLen; i++) {
            at += rxChains[i].writeTo(0, overflow.asSlice(at, Math.min(pendingLen - at, rxChains[i].writableBytes())));
        }
        completeFrame(q, k, pendingLen);
        pendingLen = 0;
        return 1;
    }

    /**
     * The driver broke ring {@code isRx} (a bad chain, or guest memory that faults) after {@code done} frames of this
     * burst were completed: those are made visible first, since their frames went out or landed in the guest's
     * buffers (a burst pops chains ahead of the frames, so a bad chain is met sooner than one frame at a time would
     * meet it). Unpublished, a packed ring's base (GET_VRING_BASE) counted them, and a restart there resumed past
     * buffers the driver never saw used. If the ring's own memory faults too, they are forgotten instead: the base
     * then counts only what the driver can see, and a restart takes those chains again (TX may resend a frame).
     */
    private void publishBeforeBreak(DeviceRing q, int done, boolean isRx) {
        if (done == 0) {
            q.discardUnpublished(); // a completion the burst did not finish (it faulted in between) is not shown
            return;
        }
        try {
            q.publish();
            if ((isRx ? rxCall : txCall) != null && q.needsNotification()) {
                signalCall(isRx);
            }
        } catch (RuntimeException | InternalError e) {
            q.discardUnpublished(); // a no-op after a publish that went through
        }
    }

    /**
     * A ring the driver broke stops here (the spec's DEVICE_NEEDS_RESET for that queue): its kicks are no longer
     * watched and the frontend's error eventfd is signalled. The other ring and every other pair go on.
     */
    private void broken(boolean isRx, EventFd err, VirtqueueException e) {
        if (isRx ? rxBroken : txBroken) {
            return;
        }
        warnings.warn(LOG, "{0} qp{1} {2}: ring broken, stopped: {3}", name, pair, isRx ? "RX" : "TX", e.getMessage());
        if (isRx) {
            rxCounters.add(QueueCounters.ERRORS, 1);
            loop.unregister(rxKick.fd());
            rxBroken = true;
        } else {
            txCounters.add(QueueCounters.ERRORS, 1);
            loop.unregister(txKick.fd());
            txBroken = true;
        }
        if (err != null) {
            notifyPeer(err); // stuck on a full counter: released by the watchdog, and nothing more to do about it
        }
    }

    /**
     * Stops the thread and frees what it owns. False, with nothing freed, if the thread does not stop: it may still
     * use its descriptors (closing them would let their numbers reach another VM's files) and its port.
     */
    boolean close() {
        stop();
        return awaitStop(System.nanoTime() + commandTimeoutNanos);
    }

    /** Tells the thread to stop, without waiting (see {@link Worker#stop}). */
    void stop() {
        loop.stop();
    }

    /**
     * After {@link #stop}: waits until {@code deadline} for the thread to end, then frees what it owns, as
     * {@link #close} does; false, with nothing freed, if it has not ended.
     */
    boolean awaitStop(long deadline) {
        if (!loop.awaitStop(deadline)) {
            return false;
        }
        if (upkeepTimer != null) {
            upkeepTimer.close();
        }
        port.close();
        return true;
    }
}
