package io.mqvirtio.device;

import io.mqvirtio.linux.Affinity;
import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.EventFd;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Function;

/**
 * One device thread (the role of a vhost thread), device-neutral: an epoll loop over the descriptors its
 * {@link WorkerHandler} registered and a command eventfd, a command channel from control threads, and an idle policy
 * (Agrona's agent-under-an-idle-strategy shape). Each round: wait (or not) on epoll, hand ready descriptors to the
 * handler, run queued commands, then one {@link WorkerHandler#work} round.
 *
 * <p>Idle policy ({@link Idle}): sleep on epoll as soon as a round found nothing (kicks wake it); or, after a round
 * that moved something, keep polling for a window before sleeping again (vhost-net's busyloop_timeout); or poll all
 * the time. The poll-or-sleep decision is taken once per round, before the work, and the worker sleeps only after a
 * round whose work re-enabled notifications and found nothing, so nothing is lost between polling and sleeping.
 * While polling, epoll is looked at every 16th round only (a syscall per round was a quarter of a net worker's time);
 * commands are noticed at once through their queue. An empty polling round yields (several polling workers often
 * share a CPU; spinning without yielding starved the other side on a machine with fewer cores than busy threads).
 *
 * <p>Commands ({@link #call}) run on the worker thread between rounds, and the caller waits for them, a bounded time:
 * a command whose caller timed out is withdrawn and never runs (it may refer to memory its caller then released).
 * A worker in a call its handler said waits for a lock of the host's ({@link #slowCall}: a TAP's ioctls take the
 * kernel's rtnl lock, which the host's network configuration holds as long as it likes) is given a longer bound, said
 * in the log: it is waiting, not stuck.
 */
public final class Worker<H extends WorkerHandler> implements Runnable {
    private static final Logger LOG = System.getLogger(Worker.class.getName());
    private static final long TOKEN_COMMAND = 0;

    /**
     * How a worker waits: {@code busyPoll}, it never sleeps; otherwise, after a round that moved something, it keeps
     * polling for {@code pollNanos} (0: it sleeps as soon as a round finds nothing).
     */
    public record Idle(boolean busyPoll, long pollNanos) {
        public Idle {
            if (pollNanos < 0) {
                throw new IllegalArgumentException("poll window " + pollNanos);
            }
            if (busyPoll) {
                pollNanos = 0;
            }
        }
    }

    private final String name;
    private final H handler;
    private final Idle idle;
    private final int cpu;
    private final long commandTimeoutNanos;
    /** How long a caller waits for a worker in a {@link #slowCall}, in all (at least the command timeout). */
    private final long slowCallTimeoutNanos;
    /** What the worker waits for in a {@link #slowCall} now, or null; and when its last one ended. */
    private volatile String slowCall;
    private volatile String lastSlowCall;
    private volatile long slowCallEnded;
    private final Epoll epoll;
    private final EventFd wakeup;
    private final ConcurrentLinkedQueue<Command<H, ?>> commands = new ConcurrentLinkedQueue<>();
    private volatile boolean running = true;
    private long lastWork;   // System.nanoTime() after the last round that moved something (with a poll window only)
    private Thread thread;

    /**
     * @param cpu                 the CPU to pin the thread to, or -1
     * @param commandTimeoutNanos how long a control thread waits for a command's answer
     */
    public Worker(String name, H handler, Idle idle, int cpu, long commandTimeoutNanos) {
        this(name, handler, idle, cpu, commandTimeoutNanos, commandTimeoutNanos);
    }

    /**
     * @param slowCallTimeoutNanos how long a control thread waits, in all, for a worker that is in a
     *                            {@link #slowCall} when the command timeout is over
     */
    public Worker(String name, H handler, Idle idle, int cpu, long commandTimeoutNanos, long slowCallTimeoutNanos) {
        this.name = name;
        this.handler = handler;
        this.idle = idle;
        this.cpu = cpu;
        this.commandTimeoutNanos = commandTimeoutNanos;
        this.slowCallTimeoutNanos = Math.max(commandTimeoutNanos, slowCallTimeoutNanos);
        // out of descriptors (EMFILE) halfway: what was made is closed, or each failed start leaked it
        this.epoll = Epoll.create(8);
        EventFd w = null;
        try {
            w = EventFd.create();
            epoll.add(w.fd(), Epoll.EPOLLIN, TOKEN_COMMAND);
        } catch (RuntimeException e) {
            if (w != null) {
                w.close();
            }
            epoll.close();
            throw e;
        }
        this.wakeup = w;
    }

    public String name() {
        return name;
    }

    /** Watches {@code fd} for {@code events}; {@link WorkerHandler#ready} gets {@code token} (1 or more). */
    public void register(int fd, int events, long token) {
        if (token == TOKEN_COMMAND) {
            throw new IllegalArgumentException("token 0 is the worker's own");
        }
        epoll.add(fd, events, token);
    }

    /**
     * Watches registered {@code fd} for {@code events} from now on. It also polls {@code fd} at once, as registering
     * does: an edge-triggered file that is ready now is reported, and one that is not asks its driver for the edge
     * (a TAP whose send buffer is full is told to wake us when it drains).
     */
    public void rearm(int fd, int events, long token) {
        epoll.modify(fd, events, token);
    }

    public void unregister(int fd) {
        epoll.remove(fd);
    }

    /**
     * On the worker thread: it enters a call that may wait for a lock of the host's ({@code what}, for the log), until
     * {@link #slowCallDone}. A command waiting meanwhile gets the slow-call timeout instead of the command timeout.
     * Not for the data path: for the rare calls that change the host's side (a TAP queue attached or detached).
     */
    public void slowCall(String what) {
        slowCall = what;
    }

    /** The worker left its {@link #slowCall}. */
    public void slowCallDone() {
        lastSlowCall = slowCall;
        slowCall = null;
        slowCallEnded = System.nanoTime();
    }

    public void start() {
        thread = Thread.ofPlatform().name(name).daemon(true).start(this);
    }

    public long threadId() {
        return thread.threadId();
    }

    /** A command for the worker thread; it runs at most once, and never after its caller gave up on it. */
    private static final class Command<H, T> {
        static final int QUEUED = 0, RUNNING = 1, DONE = 2, CANCELLED = 3;
        final AtomicInteger state = new AtomicInteger(QUEUED);
        final CompletableFuture<T> result = new CompletableFuture<>();
        final Function<H, T> body;

        Command(Function<H, T> body) {
            this.body = body;
        }

        void run(H h) {
            if (!state.compareAndSet(QUEUED, RUNNING)) {
                return; // its caller timed out: what it refers to may be gone
            }
            try {
                result.complete(body.apply(h));
            } catch (Throwable t) {
                result.completeExceptionally(t);
            } finally {
                state.set(DONE);
            }
        }
    }

    /**
     * Runs {@code command} on the worker thread between rounds and returns its result. A worker that does not answer
     * within the command timeout (one in a {@link #slowCall} then: within the slow-call timeout, in all) is a
     * {@link WorkerStuckException}: the command is then withdrawn (if it had not started, it never will), and the
     * worker may still be using whatever its handler holds.
     */
    public <T> T call(Function<H, T> command) {
        if (Thread.currentThread() == thread) {
            return command.apply(handler);
        }
        Command<H, T> c = new Command<>(command);
        if (!thread.isAlive()) {
            throw new WorkerStuckException(name + " is not running", false);
        }
        commands.add(c);
        wakeup.signal();
        try {
            long start = System.nanoTime();
            long deadline = start + commandTimeoutNanos;
            long poll = Math.min(100, Math.max(1, commandTimeoutNanos / 1_000_000));
            String waitedFor = null;
            while (true) {
                try {
                    T r = c.result.get(poll, TimeUnit.MILLISECONDS);
                    if (waitedFor != null) {
                        LOG.log(Level.WARNING, "{0}: answered after {1} ms, once the host let it through {2}", name,
                                Long.toString(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start)), waitedFor);
                    }
                    return r;
                } catch (TimeoutException e) {
                    if (!thread.isAlive() && c.state.compareAndSet(Command.QUEUED, Command.CANCELLED)) {
                        throw new WorkerStuckException(name + " died", false);
                    }
                    long now = System.nanoTime();
                    if (now - deadline > 0) {
                        // in a call that waits for the host's lock (or just out of one, on to the next): waiting,
                        // not stuck, up to the slow-call timeout in all; said once
                        String slow = slowCall;
                        if (slow == null && lastSlowCall != null
                                && now - slowCallEnded < TimeUnit.MILLISECONDS.toNanos(poll) * 2) {
                            slow = lastSlowCall;
                        }
                        if (slow != null && now - start - slowCallTimeoutNanos < 0) {
                            if (waitedFor == null) {
                                LOG.log(Level.WARNING, "{0}: a command waits past {1} ms for the worker, which is in {2}: "
                                        + "waiting up to {3} ms in all", name,
                                        Long.toString(TimeUnit.NANOSECONDS.toMillis(commandTimeoutNanos)), slow,
                                        Long.toString(TimeUnit.NANOSECONDS.toMillis(slowCallTimeoutNanos)));
                            }
                            waitedFor = slow;
                            continue;
                        }
                        boolean neverRan = c.state.compareAndSet(Command.QUEUED, Command.CANCELLED);
                        String where = neverRan ? "did not take a command" : "did not finish a command";
                        throw new WorkerStuckException(name + " " + where + " within "
                                + TimeUnit.NANOSECONDS.toMillis(waitedFor == null ? commandTimeoutNanos : now - start)
                                + " ms" + (waitedFor == null ? "" : " (in " + waitedFor + ")") + stuckAt(),
                                thread.isAlive());
                    }
                }
            }
        } catch (ExecutionException e) {
            throw e.getCause() instanceof RuntimeException r ? r : new IllegalStateException(e.getCause());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            c.state.compareAndSet(Command.QUEUED, Command.CANCELLED);
            throw new WorkerStuckException("interrupted waiting for " + name, thread.isAlive());
        }
    }

    /** Where the worker thread is, for the log: the top frames of its stack. */
    private String stuckAt() {
        StackTraceElement[] st = thread.getStackTrace();
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < Math.min(4, st.length); i++) {
            b.append(i == 0 ? " (at " : " < ").append(st[i].getClassName().replaceAll(".*\\.", "")).append('.')
                    .append(st[i].getMethodName());
        }
        return st.length == 0 ? "" : b.append(')').toString();
    }

    @Override
    public void run() {
        if (cpu >= 0) {
            try {
                Affinity.pin(cpu);
            } catch (RuntimeException e) {
                LOG.log(Level.WARNING, "{0}: cannot pin to CPU {1}: {2}", name, cpu, e.getMessage());
            }
        }
        boolean more = true;
        boolean poll = idle.busyPoll(); // whether the previous round polled: it left notifications off, so no sleeping
        long rounds = 0;
        try {
            while (running) {
                int n = poll && (++rounds & 15) != 0 && commands.isEmpty() ? 0 : epoll.await(more || poll ? 0 : -1);
                for (int i = 0; i < n; i++) {
                    long token = epoll.data(i);
                    if (token == TOKEN_COMMAND) {
                        wakeup.drain();
                    } else {
                        handler.ready(token, epoll.events(i));
                    }
                }
                Command<H, ?> c;
                while ((c = commands.poll()) != null) {
                    c.run(handler);
                }
                if (!running) {
                    break;
                }
                poll = idle.busyPoll() || (idle.pollNanos() > 0 && System.nanoTime() - lastWork < idle.pollNanos());
                int w = handler.work(poll);
                more = (w & WorkerHandler.MORE) != 0;
                if ((w & WorkerHandler.MOVED) != 0 && idle.pollNanos() > 0) {
                    lastWork = System.nanoTime();
                    more = true; // the window starts (or goes on): the next round polls
                }
                if (poll && !more) {
                    if (!idle.busyPoll() || (rounds & 255) == 0) {
                        Thread.yield();
                    } else {
                        Thread.onSpinWait();
                    }
                }
            }
        } catch (RuntimeException | Error e) {
            LOG.log(Level.ERROR, "{0}: worker failed: {1}", name, e.toString());
            throw e;
        } finally {
            // Answer anything still queued so no control thread waits for nothing (withdrawn ones do not run).
            Command<H, ?> c;
            while ((c = commands.poll()) != null) {
                c.run(handler);
            }
        }
    }

    /**
     * Stops the thread and closes its epoll and eventfd, waiting for it the command timeout at most (see
     * {@link #stop} and {@link #awaitStop}). False, with nothing closed, if the thread does not stop: it may still use
     * them (a closed descriptor's number would soon name another file).
     */
    public boolean close() {
        stop();
        return awaitStop(System.nanoTime() + commandTimeoutNanos);
    }

    /**
     * Tells the thread to stop, without waiting: it ends after its current round, or when the call it is in returns
     * (a {@link #slowCall} too: a worker that is stopping need not finish a port change first, nor be waited for
     * while it waits for the host). Commands still queued are answered as it ends.
     */
    public void stop() {
        running = false;
        if (thread != null) {
            wakeup.signal();
        }
    }

    /**
     * After {@link #stop}: waits until {@code deadline} ({@link System#nanoTime}) for the thread to end, then closes its
     * epoll and eventfd. False, with nothing closed, if it has not ended (it may still use them); it ends by itself
     * once what it waits for returns. Several workers are stopped together and waited for under one deadline.
     */
    public boolean awaitStop(long deadline) {
        if (thread != null && thread.isAlive()) {
            try {
                long left = deadline - System.nanoTime();
                if (left > 0) {
                    thread.join(java.time.Duration.ofNanos(left));
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            if (thread.isAlive()) {
                String slow = slowCall;
                LOG.log(Level.ERROR, "{0}: does not stop, its resources stay: still {1}{2}", name,
                        slow == null ? "running" : "in " + slow, stuckAt());
                return false;
            }
        }
        epoll.close();
        wakeup.close();
        return true;
    }
}
