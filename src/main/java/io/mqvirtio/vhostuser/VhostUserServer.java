package io.mqvirtio.vhostuser;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.memory.MemoryBudget;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.GroupPrincipal;
import java.nio.file.attribute.PosixFileAttributeView;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Set;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Serves one vhost-user device on one socket path: either listening (the frontend connects, QEMU's default) or
 * connecting to a frontend that listens (QEMU's {@code server=on}), reconnecting after each session. One frontend
 * at a time: a second connection while a session really runs is refused and closed; one that comes while the last
 * session is ending (its frontend hung up, and it is tearing down) waits for that, a bounded time, and is then
 * served. Each session runs on its own control thread; a session's failure ends only that session. A device that
 * is dead (a worker that does not answer) is served no more: each new frontend is closed, with the reason in the
 * log. {@link #close()} ends the session and returns once it has been torn down.
 */
public final class VhostUserServer implements AutoCloseable {
    private static final Logger LOG = System.getLogger(VhostUserServer.class.getName());
    private static final int BACKLOG = 4;
    private static final Set<PosixFilePermission> OWNER_ONLY = PosixFilePermissions.fromString("rw-------");
    private static final Set<PosixFilePermission> OWNER_AND_GROUP = PosixFilePermissions.fromString("rw-rw----");
    /** How long setting up a socket waits for another process's lock on its directory. */
    static final long LOCK_WAIT_MS = 5000;
    /** How long a new frontend waits for the last session to finish tearing down. */
    static final long TEARDOWN_WAIT_MS = 10_000;
    /** In client mode, a session shorter than this is followed by the reconnect backoff (see clientLoop). */
    private static final long SHORT_SESSION_NANOS = 1_000_000_000L;

    /**
     * How a server serves: {@code socketGroup} (null: the owner only) may connect to a listening socket (mode 0660,
     * set before the socket appears at its path); {@code memory} bounds the guest memory its sessions map.
     */
    public record Options(String socketGroup, MemoryBudget memory) {
        public static Options defaults() {
            return new Options(null, MemoryBudget.processDefault());
        }
    }

    private final Path path;
    /**
     * The listening socket is a supervisor's (shared with it): never shut down (that would end it for the supervisor
     * too), so the accept loop waits in poll with a timeout and sees {@link #closed} within it, and accepts without
     * blocking (another holder may take what poll saw).
     */
    private boolean inherited;
    private final VhostUserDevice device;
    private final boolean client;
    private final Options options;
    private final AtomicReference<BackendSession> session = new AtomicReference<>();
    private volatile Thread sessionThread;
    private volatile boolean closed;
    private UnixSocket listener;
    private Object socketInode; // the inode of the socket file we created, so close() removes only ours
    private Thread thread;
    private int sessions;
    private final WarningLimit warnings;
    private final WarningLimit notices;

    /** How long {@link #close()} waits for a session to tear down. */
    private static final long CLOSE_WAIT_MS = 5000;

    private VhostUserServer(Path path, VhostUserDevice device, boolean client, Options options) {
        this.options = options;
        this.path = path;
        this.warnings = new WarningLimit(String.valueOf(path.getFileName()));
        this.notices = WarningLimit.notices(String.valueOf(path.getFileName()), device.maxRings());
        this.device = device;
        this.client = client;
    }

    /**
     * Listens on {@code path}. A stale socket file (nobody accepts on it) is replaced; a path another live process
     * serves is refused, and so is any other kind of file. The socket file is owner-only (0600) from the moment it
     * appears at {@code path}: it is bound under a temporary name, restricted, then linked into place (a link never
     * replaces an existing file, so a server that appeared meanwhile is not taken over either).
     */
    public static VhostUserServer listen(Path path, VhostUserDevice device) {
        return listen(path, device, Options.defaults());
    }

    /**
     * Listens on {@code path} as {@link #listen(Path, VhostUserDevice)} does; with a socket group, the socket is
     * that group's and mode 0660 from the moment it appears (both are set on the temporary name, which is not a
     * link anyone else can have placed: it is created by our bind).
     */
    public static VhostUserServer listen(Path path, VhostUserDevice device, Options options) {
        GroupPrincipal group = options.socketGroup() == null ? null : lookupGroup(options.socketGroup());
        VhostUserServer s = new VhostUserServer(path, device, false, options);
        // Probing, removing a stale file and linking ours in are one step under an flock on the directory (no lock
        // file left behind): two backends starting on the same stale path would otherwise both find it stale, and
        // the second would delete the first's new socket.
        try (Fd lock = lockDirectoryOf(path)) {
            removeIfStale(path);
            s.listener = bindRestricted(path, group);
        }
        if (group != null) {
            LOG.log(Level.INFO, "{0}: group {1} may connect", path, options.socketGroup());
        }
        try {
            s.socketInode = Files.getAttribute(path, "unix:ino", LinkOption.NOFOLLOW_LINKS);
        } catch (IOException | UnsupportedOperationException e) {
            s.socketInode = null;
        }
        s.thread = Thread.ofPlatform().name("vhost-user-accept " + path.getFileName()).daemon(true).start(s::acceptLoop);
        LOG.log(Level.INFO, "listening on {0}", path);
        return s;
    }

    /**
     * Serves on a listening socket a supervisor handed us (vhost-user's {@code --fd}, systemd's socket activation),
     * named {@code name} in logs and metrics. The socket file, if there is one, is the supervisor's: {@link #close()}
     * stops accepting and closes our descriptor, and never removes it.
     */
    public static VhostUserServer adopt(UnixSocket listening, String name, VhostUserDevice device, Options options) {
        VhostUserServer s = new VhostUserServer(Path.of(name), device, false, options);
        s.listener = listening;
        s.inherited = true;
        s.socketInode = null; // nothing of ours to remove on close
        s.thread = Thread.ofPlatform().name("vhost-user-accept " + name).daemon(true).start(s::acceptLoop);
        LOG.log(Level.INFO, "listening on {0} (inherited)", name);
        return s;
    }

    private static GroupPrincipal lookupGroup(String group) {
        try {
            return java.nio.file.FileSystems.getDefault().getUserPrincipalLookupService().lookupPrincipalByGroupName(group);
        } catch (IOException e) {
            throw new VhostUserException("socket group: no group named " + group, e);
        }
    }

    /** Sets the socket file's group (if any) and mode, without following a link (the file is ours, bound just now). */
    private static void restrict(Path p, GroupPrincipal group) throws IOException {
        if (group != null) {
            Files.getFileAttributeView(p, PosixFileAttributeView.class, LinkOption.NOFOLLOW_LINKS).setGroup(group);
        }
        Files.setPosixFilePermissions(p, group == null ? OWNER_ONLY : OWNER_AND_GROUP);
    }

    /**
     * Binds the socket in a directory of our own (mode 0700, made next to {@code path}, so on the same file system),
     * gives it its group and mode there, where nobody else can replace it with a link, then hard-links it to
     * {@code path} (a link never replaces an existing file) and removes the directory. So the socket is never
     * reachable at {@code path} with a wider mode, and nothing we chmod or chown can be someone else's file.
     */
    private static UnixSocket bindRestricted(Path path, GroupPrincipal group) {
        Path abs = path.toAbsolutePath();
        Path dir;
        try {
            dir = Files.createTempDirectory(abs.getParent(), ".mqv-",
                    PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
        } catch (IOException | UnsupportedOperationException e) {
            throw new VhostUserException("cannot create a private directory next to " + path + ": " + e.getMessage(), e);
        }
        Path tmp = dir.resolve("s");
        try {
            if (tmp.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8).length > 107) {
                // No room for the private name: bind in place, the socket's mode set before the bind (so the file
                // is never wider than 0600/0660, whatever the umask), then its group and exact mode.
                UnixSocket l = UnixSocket.listen(path, BACKLOG, group == null ? 0600 : 0660);
                try {
                    restrict(path, group);
                    return l;
                } catch (IOException e) {
                    l.close();
                    deleteQuietly(path);
                    throw new VhostUserException("cannot restrict permissions of " + path + ": " + e.getMessage(), e);
                }
            }
            UnixSocket l = UnixSocket.listen(tmp, BACKLOG, group == null ? 0600 : 0660);
            try {
                restrict(tmp, group);
                Files.createLink(abs, tmp);
                return l;
            } catch (FileAlreadyExistsException e) {
                l.close();
                throw new VhostUserException(path + " appeared while binding; not replacing it", e);
            } catch (IOException | UnsupportedOperationException e) {
                l.close();
                throw new VhostUserException("cannot create owner-only socket " + path + ": " + e.getMessage(), e);
            }
        } finally {
            deleteQuietly(tmp);
            deleteQuietly(dir);
        }
    }

    /** Connects to a frontend listening on {@code path}, and again after each session ends. */
    public static VhostUserServer connect(Path path, VhostUserDevice device) {
        return connect(path, device, Options.defaults());
    }

    /** Connects as {@link #connect(Path, VhostUserDevice)} does, with {@code options}' memory budget. */
    public static VhostUserServer connect(Path path, VhostUserDevice device, Options options) {
        VhostUserServer s = new VhostUserServer(path, device, true, options);
        s.thread = Thread.ofPlatform().name("vhost-user-client " + path.getFileName()).daemon(true).start(s::clientLoop);
        return s;
    }

    private static Fd lockDirectoryOf(Path path) {
        Path dir = path.toAbsolutePath().getParent();
        if (!Files.isDirectory(dir)) {
            throw new VhostUserException("cannot listen on " + path + ": the directory " + dir + " does not exist");
        }
        try {
            return Fd.lockDirectory(dir.toString(), LOCK_WAIT_MS);
        } catch (ErrnoException e) {
            String why = e.errno() == ErrnoException.EAGAIN
                    ? "another process has held a lock on that directory for more than " + LOCK_WAIT_MS / 1000 + " s "
                            + "(any user who can read it can; use a directory only mqvirtio's user can write, such as "
                            + "/run/mqvirtio)"
                    : e.getMessage();
            throw new VhostUserException("cannot lock " + dir + " to set up " + path + ": " + why, e);
        }
    }

    /** Deletes {@code path} if it is a socket nobody listens on; refuses if someone does. */
    static void removeIfStale(Path path) {
        if (!Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        if (!isSocket(path)) {
            throw new VhostUserException(path + " exists and is not a socket; not replacing it");
        }
        try {
            // bounded: a listener that never accepts (its backlog full) must not hold us, under the directory's lock
            UnixSocket.connect(path, 1000).close();
            throw new VhostUserException(path + " is served by another live process; not taking it over");
        } catch (ErrnoException e) {
            if (e.errno() == ErrnoException.EAGAIN) {
                throw new VhostUserException(path + " is a socket something listens on without accepting; not taking "
                        + "it over", e);
            }
            if (e.errno() != ErrnoException.ECONNREFUSED) {
                throw new VhostUserException("probing " + path + ": " + e.getMessage(), e);
            }
        }
        try {
            Files.delete(path);
            LOG.log(Level.INFO, "removed stale socket {0}", path);
        } catch (IOException e) {
            throw new VhostUserException("cannot remove stale socket " + path + ": " + e.getMessage(), e);
        }
    }

    private static boolean isSocket(Path p) {
        try {
            Object mode = Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS);
            return ((Integer) mode & 0xF000) == 0xC000;
        } catch (IOException | UnsupportedOperationException e) {
            return false;
        }
    }

    private void acceptLoop() {
        FailureRun failures = new FailureRun();
        while (!closed) {
            UnixSocket conn;
            try {
                if (inherited) {
                    if (listener.poll(Fd.POLLIN, 250) == 0) {
                        continue;
                    }
                    // Another holder may take the connection poll saw before our accept does: a blocking accept would
                    // then wait for the next one, past close(), and take the one meant for the next serve. So accept
                    // on a non-blocking socket (null: nothing pending), set again each time: the flag is the open
                    // file's, shared with the supervisor, and systemd sets it anew (NonBlocking=) each time it starts
                    // a service on the socket.
                    if (!listener.isNonBlocking()) {
                        listener.setNonBlocking(true);
                    }
                }
                conn = listener.accept();
                long run = failures.succeeded();
                if (run > 0) {
                    // the lines stopped at ten (then one in a thousand): say that it is over, and how long it lasted
                    LOG.log(Level.INFO, "{0}: accepting again after {1} failures", path, run);
                }
            } catch (ErrnoException e) {
                if (closed) {
                    return;
                }
                // EMFILE, ENFILE, ENOMEM, ECONNABORTED...: pass; the listener itself is fine. Keep serving.
                if (failures.failed()) {
                    LOG.log(Level.ERROR, "{0}: accept failed ({1} in a row): {2}", path, failures.count(),
                            e.getMessage());
                }
                sleep(100);
                continue;
            } catch (RuntimeException e) {
                if (!closed) {
                    LOG.log(Level.ERROR, "{0}: accept failed, no longer listening: {1}", path, e.toString());
                }
                return;
            }
            if (conn == null) {
                continue;
            }
            String refused = admit();
            if (refused != null) {
                if (!closed) {
                    warnings.warn(LOG, "{0}: refusing a frontend: {1}", path, refused);
                }
                conn.close();
                continue;
            }
            runSession(conn, false);
        }
    }

    /**
     * Whether a frontend that just connected may be served: null if so, else why not. A session that is ending
     * (its frontend hung up) is waited for, up to {@link #TEARDOWN_WAIT_MS}: a frontend that reconnects at once,
     * QEMU after a restart, must not be turned away by the teardown of its own last connection.
     */
    private String admit() {
        if (closed) {
            return "the server is closing";
        }
        String dead = device.deadReason();
        if (dead != null) {
            return "the device is dead (" + dead + "); restart mqvirtio to serve it again";
        }
        BackendSession s = session.get();
        if (s == null) {
            return null;
        }
        if (!s.isEnding()) {
            return "a second frontend while a session runs";
        }
        Thread t = sessionThread;
        long deadline = System.nanoTime() + TEARDOWN_WAIT_MS * 1_000_000L;
        while (session.get() == s && System.nanoTime() - deadline < 0 && !closed) {
            try {
                if (t != null) {
                    t.join(10);
                } else {
                    Thread.sleep(10);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return "interrupted";
            }
        }
        if (session.get() == s) {
            return "the last session did not finish tearing down within " + TEARDOWN_WAIT_MS / 1000 + " s";
        }
        dead = device.deadReason();
        return dead == null ? null : "the device is dead (" + dead + "); restart mqvirtio to serve it again";
    }

    private void clientLoop() {
        long delay = 100;
        FailureRun failures = new FailureRun();
        while (!closed) {
            UnixSocket conn;
            try {
                conn = UnixSocket.connect(path, 1000);
            } catch (RuntimeException e) {
                // A frontend that is not there (yet), or not accepting, is what this loop waits out in silence; any
                // other failure is ours to tell (out of file descriptors: socket(2) fails with EMFILE), within the
                // bounds the accept loop's lines have
                boolean absent = e instanceof ErrnoException x && (x.errno() == ErrnoException.ENOENT
                        || x.errno() == ErrnoException.ECONNREFUSED || x.errno() == ErrnoException.EAGAIN);
                if (!absent && failures.failed()) {
                    LOG.log(Level.ERROR, "{0}: cannot connect ({1} in a row): {2}", path, failures.count(),
                            e.getMessage());
                }
                sleep(delay);
                delay = Math.min(delay * 2, 1000);
                continue;
            }
            failures.succeeded();
            String dead = device.deadReason();
            if (dead != null) {
                conn.close();
                warnings.warn(LOG, "{0}: not serving: the device is dead ({1}); restart mqvirtio to serve it again", path, dead);
                sleep(1000);
                continue;
            }
            LOG.log(Level.INFO, "connected to {0}", path);
            long began = System.nanoTime();
            runSession(conn, true);
            if (System.nanoTime() - began < SHORT_SESSION_NANOS && !closed) {
                // A frontend that ends each session at once (QEMU server=on refusing the device, a misconfigured
                // peer) gets the backoff of one that does not listen: reconnecting at once made thousands of
                // sessions a second, each a thread and a dozen log lines. A session that lasted is followed at once
                // (a frontend restarting under its VM).
                sleep(delay);
                delay = Math.min(delay * 2, 1000);
            } else {
                delay = 100;
            }
        }
    }

    /** Runs a session on its own thread; in client mode waits for it before reconnecting. */
    private void runSession(UnixSocket conn, boolean wait) {
        String name = path.getFileName() + "#" + (++sessions);
        BackendSession s = new BackendSession(name, new Channel(conn), device, warnings, notices, options.memory());
        session.set(s);
        Thread t = Thread.ofPlatform().name("vhost-user " + name).daemon(true).unstarted(() -> {
            try {
                s.run();
            } catch (RuntimeException | Error e) {
                LOG.log(Level.ERROR, name + ": session failed", e);
            } finally {
                session.compareAndSet(s, null);
            }
        });
        sessionThread = t;
        t.start();
        if (closed) {
            s.close(); // close() ran before this session was published: end it now
        }
        if (wait) {
            try {
                t.join();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    public Path path() {
        return path;
    }

    public boolean hasSession() {
        return session.get() != null;
    }

    /**
     * Stops listening (or reconnecting), ends the running session and waits for it to tear down, and removes the
     * socket file if it is still the one this server created.
     */
    @Override
    public void close() {
        closed = true;
        BackendSession s = session.get();
        if (s != null) {
            s.close();
        }
        if (listener != null && !inherited) {
            try {
                listener.shutdown(); // wakes the accept loop
            } catch (RuntimeException ignored) {
                // not every kernel wakes accept on shutdown; closing below does
            }
            removeOwnSocketFile();
        }
        join(thread);
        if (listener != null) {
            listener.close();
        }
        s = session.get();
        if (s != null) {
            s.close(); // started while we were closing
        }
        join(sessionThread);
        if (sessionThread != null && sessionThread.isAlive()) {
            LOG.log(Level.WARNING, "{0}: session did not end within {1} ms", path, CLOSE_WAIT_MS);
        }
    }

    private void removeOwnSocketFile() {
        try {
            Object ino = Files.getAttribute(path, "unix:ino", LinkOption.NOFOLLOW_LINKS);
            if (socketInode != null && socketInode.equals(ino)) {
                Files.deleteIfExists(path);
            } else if (socketInode != null) {
                LOG.log(Level.WARNING, "{0} is no longer our socket; leaving it", path);
            }
        } catch (IOException | UnsupportedOperationException e) {
            // gone already, or not ours to judge: leave it
        }
    }

    private static void join(Thread t) {
        if (t == null) {
            return;
        }
        try {
            t.join(CLOSE_WAIT_MS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private static void deleteQuietly(Path p) {
        try {
            Files.deleteIfExists(p);
        } catch (IOException ignored) {
            // best effort
        }
    }
}
