package io.mqvirtio.peers;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.bench.Testpmd;
import io.mqvirtio.cli.Launcher;
import io.mqvirtio.linux.TestNetns;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ThreadLocalRandom;

/**
 * The real-peer tests' one harness: a network namespace of the test's own (created when first needed) with its
 * TAPs, bridges and addresses; any number of QEMU guests ({@link Guest}); testpmd in either role ({@link Testpmd},
 * the bench's own launcher); {@code mqvirtio serve} processes inside the namespace; and whatever else a test hands
 * it. Everything is stopped or closed when the lab closes, last first, the namespace after all of it; logs stay in
 * the lab's directory.
 *
 * <pre>{@code
 * try (PeerLab lab = PeerLab.open(dir)) {
 *     TapBackend tap = lab.tap("mqvq", 4);            // a multiqueue TAP in the namespace, host side addressed
 *     NetDevice dev = lab.own(new NetDevice(NetDevice.Config.of("vm", 4), tap));
 *     lab.own(VhostUserServer.listen(sock, dev));
 *     Guest g = lab.guest("vm").vhostUser(sock).queues(4).script("multiqueue.sh")
 *             .arg("ip", lab.guestCidr()).arg("peer", lab.host()).start();
 *     g.awaitExit(300);
 * }
 * }</pre>
 */
public final class PeerLab implements AutoCloseable {
    private final Path dir;
    private final String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x1000, 0x10000));
    /** The lab's /24: 10.(70-89).(10-249).0; each lab has its own namespace, so two labs may share one. */
    private final String subnet = "10." + ThreadLocalRandom.current().nextInt(70, 90) + "."
            + ThreadLocalRandom.current().nextInt(10, 250) + ".";
    private final List<AutoCloseable> owned = new ArrayList<>();
    private TestNetns ns;

    private PeerLab(Path dir) {
        this.dir = dir;
    }

    /** A lab whose logs go to {@code dir}. */
    public static PeerLab open(Path dir) throws java.io.IOException {
        return new PeerLab(Files.createDirectories(dir.toAbsolutePath()));
    }

    public Path dir() {
        return dir;
    }

    /** The repository (the tests run in it). */
    public Path repo() {
        return Path.of("").toAbsolutePath();
    }

    /** The namespace (root needed), created on first use with its loopback up. */
    public synchronized TestNetns netns() throws Exception {
        if (ns == null) {
            Peers.requireRoot("a network namespace with TAP devices");
            ns = TestNetns.create();
            ns.ip("link", "set", "lo", "up");
        }
        return ns;
    }

    /** Runs {@code task} on a thread inside the namespace (sockets, TAPs and servers opened there live there). */
    public <T> T inside(Callable<T> task) throws Exception {
        return netns().inside(task);
    }

    /** {@code ip -n NS args…}. */
    public String ip(String... args) throws Exception {
        return netns().ip(args);
    }

    /** An interface name of this lab: {@code prefix} (at most 9 characters) and the lab's id. */
    public String ifname(String prefix) {
        if (prefix.length() > 9) {
            throw new IllegalArgumentException("interface prefix too long: " + prefix);
        }
        return prefix + id;
    }

    /** The host side's address in the lab's subnet (.1). */
    public String host() {
        return address(1);
    }

    /** The guest's address (.2), and with its prefix length. */
    public String guestIp() {
        return address(2);
    }

    public String guestCidr() {
        return guestIp() + "/24";
    }

    /** Address {@code n} of the lab's /24. */
    public String address(int n) {
        return subnet + n;
    }

    /**
     * A multiqueue TAP {@code ifname(prefix)} opened in the namespace with {@code queues} queues, link up; the
     * first TAP a lab opens gets the host address. The lab closes it (after whatever owns it, if that was made
     * later).
     */
    public TapBackend tap(String prefix, int queues) throws Exception {
        String name = ifname(prefix);
        TapBackend t = own(inside(() -> TapBackend.open(name, queues)));
        hostSide(name);
        return t;
    }

    /** A persistent multiqueue TAP (it outlives the processes that open it), link up, the host address on it. */
    public String persistentTap(String prefix) throws Exception {
        String name = ifname(prefix);
        ip("tuntap", "add", "dev", name, "mode", "tap", "multi_queue");
        hostSide(name);
        return name;
    }

    private void hostSide(String dev) throws Exception {
        if (ip("-4", "addr", "show").contains(host() + "/")) {
            ip("link", "set", dev, "up");
        } else {
            up(dev, host() + "/24");
        }
    }

    /** Adds {@code cidr} to {@code dev} and sets it up. */
    public void up(String dev, String cidr) throws Exception {
        ip("addr", "add", cidr, "dev", dev);
        ip("link", "set", dev, "up");
    }

    /** A bridge over {@code members}; the host address moves from them to it. */
    public String bridge(String prefix, String... members) throws Exception {
        String br = ifname(prefix);
        ip("link", "add", br, "type", "bridge");
        for (String m : members) {
            ip("addr", "flush", "dev", m);
            ip("link", "set", m, "master", br);
            ip("link", "set", m, "up");
        }
        up(br, host() + "/24");
        return br;
    }

    /** A guest to start: {@code name} names its logs, QMP socket and pid file. */
    public Guest.Options guest(String name) {
        return new Guest.Options(this, name);
    }

    /**
     * testpmd (interactive, forwarding not yet started: type {@code start}) with one virtual device, e.g.
     * {@code net_vhost0,iface=SOCK,queues=N} or {@code net_virtio_user0,path=SOCK,queues=N,cq=1}; its log is
     * {@code name.log}. Its prompt comes once its port is set up (a virtio-user port connected and negotiated, a
     * vhost port's socket created).
     */
    public Testpmd testpmd(String name, String vdev, int queues, String forward, int txpkts, String... more)
            throws Exception {
        Path bin = Peers.require("dpdk-testpmd", "DPDK testpmd");
        return own(Testpmd.start(bin, vdev, queues, forward, txpkts, new int[0], dir.resolve(name + ".log"), 60,
                List.of(more)));
    }

    /** {@code mqvirtio serve args…} as its own process inside the namespace; {@code tag.out}/{@code tag.err}. */
    public Launcher.Run serve(String tag, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("ip", "netns", "exec", netns().name()));
        List<String> serve = new ArrayList<>(List.of("serve"));
        serve.addAll(List.of(args));
        cmd.addAll(Launcher.command(serve.toArray(String[]::new)));
        return own(Launcher.start(dir, tag, cmd));
    }

    /** Hands {@code thing} to the lab, which closes it, things handed later first. */
    public synchronized <T extends AutoCloseable> T own(T thing) {
        owned.add(thing);
        return thing;
    }

    /** Closes what it was handed (last first; every one, even when one fails), then deletes the namespace. */
    @Override
    public synchronized void close() throws Exception {
        Exception first = null;
        for (int i = owned.size() - 1; i >= 0; i--) {
            try {
                owned.get(i).close();
            } catch (Exception e) {
                if (first == null) {
                    first = e;
                } else {
                    first.addSuppressed(e);
                }
            }
        }
        owned.clear();
        if (ns != null) {
            try {
                ns.close();
            } catch (Exception e) {
                if (first == null) {
                    first = e;
                } else {
                    first.addSuppressed(e);
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }
}
