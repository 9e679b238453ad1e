package io.mqvirtio.linux;

import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.ref.WeakReference;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.locks.LockSupport;

/**
 * Releases threads stuck writing to an eventfd that a peer filled on purpose (see {@link EventFd}): one thread for
 * the whole process looks, every {@link #PERIOD_NANOS}, at each thread that has signalled an eventfd. A write still
 * in progress since its last look, on a counter at its limit, can only be a peer that filled the counter with
 * O_NONBLOCK cleared on the open file it shares with us (a write of 1 waits only then): draining the counter
 * releases the write, and {@link EventFd#signal()} then returns false. A write that is merely slow (its thread was
 * descheduled) finds the counter below its limit and is left alone, so no well-behaved peer ever loses a count.
 *
 * <p>So a peer can hold one of our threads for two periods at most. Costs: per signal, a thread-local lookup and two
 * volatile stores; per period, a volatile read per signalling thread.
 */
final class EventFdWatchdog {
    private static final Logger LOG = System.getLogger(EventFdWatchdog.class.getName());
    static final long PERIOD_NANOS = 50_000_000L;

    /** One signalling thread's state, written by that thread and read by the watchdog. */
    static final class Slot {
        final WeakReference<Thread> owner;
        final String name;
        volatile EventFd writing;   // the eventfd this thread is writing to now, or null
        int seq;                    // bumped before each write, read by the watchdog after `writing`
        volatile boolean released;  // the watchdog drained a counter this thread was stuck on
        EventFd seen;               // the watchdog's own notes (its thread only)
        int seenSeq;
        long releases;              // writes of this thread released so far (the watchdog's thread only)

        Slot(Thread t) {
            owner = new WeakReference<>(t);
            name = t.getName();
        }
    }

    private static final Set<Slot> SLOTS = ConcurrentHashMap.newKeySet();
    private static final ThreadLocal<Slot> SLOT = ThreadLocal.withInitial(EventFdWatchdog::register);
    private static Thread thread;

    private EventFdWatchdog() {}

    /** The calling thread's slot (registered on first use). */
    static Slot slot() {
        return SLOT.get();
    }

    private static synchronized Slot register() {
        Slot s = new Slot(Thread.currentThread());
        SLOTS.add(s);
        if (thread == null) {
            thread = Thread.ofPlatform().name("mqvirtio-eventfd-watchdog").daemon(true).start(EventFdWatchdog::loop);
        }
        return s;
    }

    private static void loop() {
        while (true) {
            LockSupport.parkNanos(PERIOD_NANOS);
            for (Slot s : SLOTS) {
                Thread t = s.owner.get();
                if (t == null || !t.isAlive()) {
                    SLOTS.remove(s);
                    continue;
                }
                check(s);
            }
        }
    }

    private static void check(Slot s) {
        EventFd e = s.writing;
        int seq = s.seq;
        if (e != null && e == s.seen && seq == s.seenSeq) {
            // Under the eventfd's lock, so that its owner cannot close it and the kernel give its number to another
            // file between our look and our read (the write we look at may end, and its ring be torn down, meanwhile).
            // The line after, outside it: a log handler that waits (standard error into a full pipe) must not hold up
            // the eventfd's close.
            boolean released;
            synchronized (e) {
                released = release(s, e);
            }
            if (released) {
                // A thread's first release is a WARNING, later ones DEBUG: a frontend can fill its eventfd again
                // after each release, ten times a second, and the log is every VM's (the writer learns of each
                // release from signal(), and a worker then breaks the ring, within its device's allowance)
                LOG.log(++s.releases == 1 ? Level.WARNING : Level.DEBUG, "{0}: released a write to an eventfd that "
                        + "its peer filled to the limit with O_NONBLOCK cleared{1}", s.name, s.releases == 1
                        ? " (further releases on this thread are logged at DEBUG)" : " (" + s.releases + " so far)");
            }
        }
        s.seen = e;
        s.seenSeq = seq;
    }

    /**
     * Drains {@code e} if its counter is at its limit (a write on it waits), having told the writer first (its write
     * returns as soon as the counter is drained); whether it did.
     */
    private static boolean release(Slot s, EventFd e) {
        try {
            if (e.isOpen() && e.isFull()) {
                s.released = true;
                e.drain();
                return true;
            }
        } catch (RuntimeException closed) {
            // closed meanwhile: that write is over
        }
        return false;
    }
}
