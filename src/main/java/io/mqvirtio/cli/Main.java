package io.mqvirtio.cli;

import java.io.PrintStream;
import java.util.Arrays;
import java.util.Set;

/** The {@code mqvirtio} command. */
public final class Main {
    private static final String USAGE = """
            usage: mqvirtio COMMAND [OPTIONS]

            commands:
              demo                 our driver and our backend (loopback) in one process over a real vhost-user
                                   socket: one traffic thread per queue pair, then a per-queue table
                  --pairs N        queue pairs (default 2)
                  --size B         frame size in bytes (default 64)
                  --seconds S      how long to measure (default 3)
            """ + Bench.USAGE + """
              serve                a vhost-user-net backend (QEMU or DPDK virtio-user connect to it)
                  --socket-path P  the vhost-user socket (listened on; with --client, connected to)
                  --fd N           listen on descriptor N, a listening AF_UNIX socket a supervisor passed (instead
                                   of --socket-path; fd=N in a --vm). With neither, the sockets systemd passes
                                   (socket activation: LISTEN_FDS) are the VMs', in order; serve tells systemd
                                   when it is ready and when it stops (NOTIFY_SOCKET, Type=notify)
                  --queues N       queue pairs (default 1); QEMU's queues= must not exceed it
                  --tap NAME       multiqueue TAP device as the host side: an existing one is used and kept;
                                   one that does not exist is created, and removed when serve exits
                  --loopback       frames a queue pair sends come back on its RX
                  --mtu N          MTU offered to the guest (default 1500)
                  --client         connect to a frontend that listens (QEMU server=on) and reconnect
                  --busy-poll      workers poll their rings instead of sleeping on kicks
                  --poll-us N      without --busy-poll: after frames moved, a worker polls N microseconds more
                                   before it sleeps on kicks again (fewer kicks and wake-ups for steady
                                   traffic; vhost-net's busyloop_timeout); default 0
                  --cpus LIST      pin queue pair i's worker to LIST[i mod length]
                  --stats-interval S  print per-queue counters every S seconds
                  --metrics ADDR:PORT  serve per-queue counters over HTTP on a loopback address (127.0.0.1:9100,
                                   [::1]:9100; port 0 picks one, logged): /metrics in Prometheus text format,
                                   /stats in JSON
                  --name NAME      the device's name in logs and metrics (default: the socket's file name)
                  --vm SPEC        one VM's device, repeatable (several VMs in one serve, each with its own socket,
                                   workers and backend): the options above as key=value, comma-separated, e.g.
                                   --vm socket-path=/run/vm1.sock,queues=4,tap=mqv1 --vm socket-path=/run/vm2.sock,loopback
                                   (cpus=0:1 inside a spec)
                  --socket-group G listened sockets belong to group G and its members may connect (0660);
                                   without it only the owner may (0600)
                  --max-memory SIZE  the most guest memory one VM may share with serve (512M, 16G, 1T; also
                                   max-memory= in a --vm); default: the host's memory
                  --max-total-memory SIZE  the most all VMs of this serve may share together; default: four
                                   times the host's memory
                  --print-capabilities  print the backend's capabilities as JSON and exit
                  --debug          log every vhost-user message
                                   SIGTERM or SIGINT stops it cleanly (socket file removed, TAP queues closed, a
                                   TAP device it created gone) with exit status 0
              stats                print a running serve's per-queue counters (read from its --metrics endpoint)
                  --from ADDR:PORT the address given to serve --metrics
                  --watch S        every S seconds, print per-queue rates (packets/s, Mbit/s, drops/s, ...)
                  --count N        with --watch: stop after N samples
              help                 this text
            """;

    private Main() {}

    public static void main(String[] argv) {
        System.exit(run(argv, System.out, System.err));
    }

    static int run(String[] argv, PrintStream out, PrintStream err) {
        if (argv.length == 0 || argv[0].equals("help") || argv[0].equals("--help") || argv[0].equals("-h")) {
            out.print(USAGE);
            return argv.length == 0 ? 2 : 0;
        }
        String[] rest = Arrays.copyOfRange(argv, 1, argv.length);
        try {
            return switch (argv[0]) {
                case "demo" -> demo(new Args(rest, Set.of("seconds", "pairs", "size"), Set.of()), out);
                case "bench" -> Bench.run(rest, out, err);
                case "serve" -> Serve.run(new Args(rest, Serve.VALUED, Serve.FLAGS), out, err);
                case "stats" -> Stats.run(new Args(rest, Stats.VALUED, Stats.FLAGS), out, err);
                default -> throw new Args.UsageException("unknown command '" + argv[0] + "'");
            };
        } catch (IllegalArgumentException | io.mqvirtio.vhostuser.VhostUserException | io.mqvirtio.linux.ErrnoException e) {
            err.println("mqvirtio: " + e.getMessage());
            return 1;
        } catch (Args.UsageException e) {
            err.println("mqvirtio: " + e.getMessage());
            err.println("run 'mqvirtio help' for usage");
            return 2;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return 130;
        } catch (Exception e) {
            err.println("mqvirtio: " + e);
            return 1;
        }
    }

    private static int demo(Args a, PrintStream out) throws Exception {
        Logging.quiet();
        io.mqvirtio.bench.DriverDemo.run(a.integer("pairs", 2, 1, 64), a.integer("size", 64, 60, 2000),
                a.decimal("seconds", 3, 0.2, 3600), out);
        return 0;
    }
}
