package io.mqvirtio.cli;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Callable;
import picocli.AutoComplete;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Spec;
import picocli.CommandLine.UnmatchedArgumentException;

/**
 * The {@code mqvirtio} command: its subcommands, their options, help, version and shell completion are picocli
 * definitions (the man page is generated from the same ones). Exit status: 0, 1 when something
 * failed, 2 for a command line that cannot be run (one line saying why, and where its help is).
 */
@Command(name = "mqvirtio", mixinStandardHelpOptions = true, versionProvider = Main.Version.class,
        synopsisSubcommandLabel = "COMMAND",
        description = "Multiqueue virtio-net in pure Java: a vhost-user-net backend for QEMU and DPDK's virtio-user, a "
                + "userspace virtio-net driver, and the benchmark that measures both against DPDK and the kernel's TAP.",
        commandListHeading = "%nCommands:%n",
        subcommands = {Main.Demo.class, Serve.Command.class, Stats.Command.class, Bench.Command.class,
            CommandLine.HelpCommand.class, AutoComplete.GenerateCompletion.class, ManPage.Generate.class},
        footerHeading = "%n",
        footer = {"'mqvirtio help COMMAND' (or 'mqvirtio COMMAND --help') tells a command's options.",
            "Exit status: 0 done, 1 failed, 2 a command line that cannot be run."})
public final class Main implements Callable<Integer> {
    /** Usage text lines are at most this wide. */
    static final int WIDTH = 110;

    @Spec
    CommandSpec spec;

    public static void main(String[] argv) {
        System.exit(run(argv, System.out, System.err));
    }

    /** Runs one command line, printing to {@code out} and {@code err}; the exit status. */
    public static int run(String[] argv, PrintStream out, PrintStream err) {
        return commandLine(out, err).execute(argv);
    }

    /** The whole command tree, its commands writing to {@code out} and {@code err}. */
    static CommandLine commandLine(PrintStream out, PrintStream err) {
        CommandLine.IFactory factory = new CommandLine.IFactory() {
            @Override
            public <K> K create(Class<K> cls) throws Exception {
                K k = CommandLine.defaultFactory().create(cls);
                if (k instanceof Streams s) {
                    s.out = out;
                    s.err = err;
                }
                return k;
            }
        };
        CommandLine cl = new CommandLine(new Main(), factory);
        cl.setOut(new PrintWriter(out, true, StandardCharsets.UTF_8));
        cl.setErr(new PrintWriter(err, true, StandardCharsets.UTF_8));
        cl.setUsageHelpWidth(WIDTH);
        cl.setOverwrittenOptionsAllowed(true); // the last of a repeated option counts, as a supervisor appends them
        cl.setParameterExceptionHandler(Main::usageError);
        cl.setExecutionExceptionHandler((e, cmd, parsed) -> failed(e, cmd));
        cl.getSubcommands().get("generate-completion").getCommandSpec().usageMessage().hidden(false)
                .description("a bash/zsh completion script for mqvirtio: source <(mqvirtio generate-completion)");
        return cl;
    }

    /** {@code mqvirtio} alone: the usage, and status 2 (nothing was asked). */
    @Override
    public Integer call() {
        spec.commandLine().usage(spec.commandLine().getErr());
        return 2;
    }

    private static int usageError(ParameterException e, String[] args) {
        PrintWriter w = e.getCommandLine().getErr();
        String m = e.getMessage();
        if (e instanceof UnmatchedArgumentException u && !u.getUnmatched().isEmpty()) {
            String first = u.getUnmatched().get(0);
            if (u.isUnknownOption()) {
                m = "unknown option " + first.replaceFirst("=.*", "");
                List<String> maybe = u.getSuggestions();
                if (!maybe.isEmpty()) {
                    m += " (did you mean " + String.join(" or ", maybe.subList(0, Math.min(3, maybe.size()))) + "?)";
                }
            } else if (e.getCommandLine().getCommand() instanceof Main) {
                m = "unknown command '" + first + "'";
            } else {
                m = "unexpected argument '" + first + "'";
            }
        }
        w.println("mqvirtio: " + m);
        w.println(helpHint(e.getCommandLine()));
        return 2;
    }

    private static int failed(Exception e, CommandLine cmd) {
        PrintWriter w = cmd.getErr();
        if (e instanceof UsageException) {
            w.println("mqvirtio: " + e.getMessage());
            w.println(helpHint(cmd));
            return 2;
        }
        if (e instanceof InterruptedException) {
            Thread.currentThread().interrupt();
            return 130;
        }
        if (e instanceof IllegalArgumentException || e instanceof io.mqvirtio.vhostuser.VhostUserException
                || e instanceof io.mqvirtio.linux.ErrnoException || e instanceof IOException) {
            w.println("mqvirtio: " + Serve.message(e));
        } else {
            w.println("mqvirtio: " + e);
        }
        return 1;
    }

    /** Where a command's help is: {@code mqvirtio help serve}, {@code mqvirtio bench ring --help}. */
    static String helpHint(CommandLine cmd) {
        List<String> path = new java.util.ArrayList<>();
        for (CommandLine c = cmd; c.getParent() != null; c = c.getParent()) {
            path.addFirst(c.getCommandName());
        }
        return switch (path.size()) {
            case 0 -> "run 'mqvirtio help' for usage";
            case 1 -> "run 'mqvirtio help " + path.get(0) + "' for usage";
            default -> "run 'mqvirtio " + String.join(" ", path) + " --help' for usage";
        };
    }

    /** {@code mqvirtio --version}: the project's version (from the build), the JDK it runs on. */
    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"mqvirtio " + version(),
                "Java " + Runtime.version() + " (" + System.getProperty("java.vm.name") + ", "
                        + System.getProperty("java.vm.vendor") + ")"};
        }

        static String version() {
            try (InputStream in = Main.class.getResourceAsStream("version.properties")) {
                Properties p = new Properties();
                if (in != null) {
                    p.load(in);
                }
                String v = p.getProperty("version");
                return v == null || v.startsWith("$") ? "(unknown version: not built by Maven)" : v;
            } catch (IOException e) {
                return "(unknown version: " + e.getMessage() + ")";
            }
        }
    }

    @Command(name = "demo", mixinStandardHelpOptions = true, versionProvider = Version.class,
            description = "Our driver and our backend (loopback) in one process over a real vhost-user socket: one "
                    + "traffic thread per queue pair, then a per-queue table.")
    static final class Demo extends Streams implements Callable<Integer> {
        @Option(names = "--pairs", paramLabel = "N", defaultValue = "2", description = "queue pairs (default ${DEFAULT-VALUE})")
        int pairs;

        @Option(names = "--size", paramLabel = "B", defaultValue = "64",
                description = "frame size in bytes (default ${DEFAULT-VALUE})")
        int size;

        @Option(names = "--seconds", paramLabel = "S", defaultValue = "3",
                description = "how long to measure (default ${DEFAULT-VALUE})")
        double seconds;

        @Override
        public Integer call() throws Exception {
            Check.range("--pairs", pairs, 1, 64);
            Check.range("--size", size, 60, 2000);
            Check.range("--seconds", seconds, 0.2, 3600);
            Logging.quiet();
            io.mqvirtio.bench.DriverDemo.run(pairs, size, seconds, out);
            return 0;
        }
    }
}
