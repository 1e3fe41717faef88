package dist

// The launch side: this process's place in a job, from the environment that torchrun, Slurm's srun
// or an MPI launcher sets. fewstep runs one process per node driving its GPUs (one goroutine each),
// or, under a launcher that starts one process per GPU, each process drives its share of the node's
// GPUs (LocalRank of LocalSize). docs/multi-gpu.md has the table of variables.

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// DefaultPort is the rendezvous port when MASTER_PORT is not set (torchrun's default).
const DefaultPort = 29500

// PortEnv, when set, is the rendezvous port whatever MASTER_PORT says. Without it the port is
// MASTER_PORT, or MASTER_PORT+1 under torchrun, whose agent serves its own store at MASTER_PORT
// (TORCHELASTIC_USE_AGENT_STORE=True).
const PortEnv = "FEWSTEP_RDZV_PORT"

// Process is this process's place in a job of several processes.
type Process struct {
	Rank, Size           int    // this process, the number of processes
	LocalRank, LocalSize int    // among the processes of this node, which share its GPUs
	Addr                 string // host:port of process 0's rendezvous (empty for one process)
	Launcher             string // "torchrun", "slurm", "mpi", or "" (one process, no launcher)
}

// Launchers are the values of --launcher.
var Launchers = []string{"auto", "none", "torchrun", "slurm", "mpi"}

// Getenv looks up an environment variable (os.LookupEnv, or a map in tests).
type Getenv func(key string) (string, bool)

// EnvMap is a Getenv over a map.
func EnvMap(m map[string]string) Getenv {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// ProcessFromEnv finds this process's place from the launcher's variables. launcher is one of
// Launchers: "auto" takes torchrun's variables when RANK, WORLD_SIZE, NODE_RANK or NNODES is set,
// else an MPI launcher's (OMPI_COMM_WORLD_*, PMI_*), else Slurm's (SLURM_NTASKS), else one process;
// "none" is one process whatever the environment says. Missing partners (RANK without WORLD_SIZE),
// values that disagree and ranks out of range are errors that name the variables.
func ProcessFromEnv(launcher string, env Getenv) (Process, error) {
	if env == nil {
		env = os.LookupEnv
	}
	has := func(keys ...string) bool {
		for _, k := range keys {
			if _, ok := env(k); ok {
				return true
			}
		}
		return false
	}
	if launcher == "" || launcher == "auto" {
		switch {
		case has("RANK", "WORLD_SIZE", "NODE_RANK", "NNODES"):
			launcher = "torchrun"
		case has("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK"):
			launcher = "mpi"
		case has("SLURM_NTASKS", "SLURM_PROCID"):
			launcher = "slurm"
		default:
			launcher = "none"
		}
	}
	var p Process
	var err error
	switch launcher {
	case "none":
		return Process{Size: 1, LocalSize: 1}, nil
	case "torchrun":
		p, err = torchrunEnv(env)
	case "slurm":
		p, err = slurmEnv(env)
	case "mpi":
		p, err = mpiEnv(env)
	default:
		return p, fmt.Errorf("--launcher %q: want one of %s", launcher, strings.Join(Launchers, ", "))
	}
	if err != nil {
		return p, fmt.Errorf("%s launch: %w", launcher, err)
	}
	p.Launcher = launcher
	if err := p.check(); err != nil {
		return p, fmt.Errorf("%s launch: %w", launcher, err)
	}
	if p.Size == 1 {
		p.Addr = ""
	}
	return p, nil
}

func (p Process) check() error {
	if p.Size < 1 {
		return fmt.Errorf("%d processes: want at least 1", p.Size)
	}
	if p.Rank < 0 || p.Rank >= p.Size {
		return fmt.Errorf("process rank %d of %d: want 0 ≤ rank < %d", p.Rank, p.Size, p.Size)
	}
	if p.LocalSize < 1 || p.LocalRank < 0 || p.LocalRank >= p.LocalSize {
		return fmt.Errorf("local rank %d of %d processes on this node: want 0 ≤ local rank < local size", p.LocalRank, p.LocalSize)
	}
	if p.LocalSize > p.Size {
		return fmt.Errorf("%d processes on this node but %d in all", p.LocalSize, p.Size)
	}
	return nil
}

// envInt reads an integer variable: ok false when unset, an error naming it when not an integer.
func envInt(env Getenv, key string) (v int, ok bool, err error) {
	s, ok := env(key)
	if !ok {
		return 0, false, nil
	}
	v, err = strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, true, fmt.Errorf("%s=%q is not an integer", key, s)
	}
	return v, true, nil
}

// ints reads several integer variables; the first error wins.
type intReader struct {
	env Getenv
	err error
}

func (r *intReader) get(key string) (int, bool) {
	v, ok, err := envInt(r.env, key)
	if err != nil && r.err == nil {
		r.err = err
	}
	return v, ok
}

// masterAddr is MASTER_ADDR:MASTER_PORT (the port defaulting to DefaultPort), or fallback host
// when MASTER_ADDR is unset ("" fallback: an error saying what to set).
func masterAddr(env Getenv, fallback, why string) (string, error) {
	host, ok := env("MASTER_ADDR")
	if !ok || strings.TrimSpace(host) == "" {
		if fallback == "" {
			return "", fmt.Errorf("MASTER_ADDR is not set: set it to the host of process 0%s", why)
		}
		host = fallback
	}
	port := DefaultPort
	if s, ok := env("MASTER_PORT"); ok {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 1 || v > 65535 {
			return "", fmt.Errorf("MASTER_PORT=%q: want a port number (1-65535)", s)
		}
		port = v
		// Under torchrun the agent itself serves its store at MASTER_PORT: take the next port.
		if v, ok := env("TORCHELASTIC_USE_AGENT_STORE"); ok && strings.EqualFold(v, "true") {
			port++
		}
	}
	if s, ok := env(PortEnv); ok {
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || v < 1 || v > 65535 {
			return "", fmt.Errorf("%s=%q: want a port number (1-65535)", PortEnv, s)
		}
		port = v
	}
	return net.JoinHostPort(strings.TrimSpace(host), strconv.Itoa(port)), nil
}

// torchrunEnv: RANK and WORLD_SIZE (one process each, LOCAL_RANK of LOCAL_WORLD_SIZE on its node),
// or NODE_RANK and NNODES (one process per node); MASTER_ADDR, MASTER_PORT.
func torchrunEnv(env Getenv) (Process, error) {
	r := &intReader{env: env}
	rank, hasRank := r.get("RANK")
	world, hasWorld := r.get("WORLD_SIZE")
	node, hasNode := r.get("NODE_RANK")
	nnodes, hasNNodes := r.get("NNODES")
	lrank, hasLRank := r.get("LOCAL_RANK")
	lsize, hasLSize := r.get("LOCAL_WORLD_SIZE")
	if r.err != nil {
		return Process{}, r.err
	}
	var p Process
	switch {
	case hasRank && !hasWorld:
		return p, fmt.Errorf("RANK=%d is set but WORLD_SIZE is not", rank)
	case hasWorld && !hasRank && !hasNode:
		return p, fmt.Errorf("WORLD_SIZE=%d is set but RANK (or NODE_RANK) is not", world)
	case hasNode && !hasNNodes && !hasRank:
		return p, fmt.Errorf("NODE_RANK=%d is set but NNODES is not", node)
	case hasNNodes && !hasNode && !hasRank:
		return p, fmt.Errorf("NNODES=%d is set but NODE_RANK (or RANK) is not", nnodes)
	}
	if hasRank { // one process per GPU, or per node
		p.Rank, p.Size = rank, world
		switch {
		case hasLSize:
			p.LocalSize = lsize
		case hasNNodes:
			if nnodes < 1 || world%nnodes != 0 {
				return p, fmt.Errorf("WORLD_SIZE=%d processes do not split evenly over NNODES=%d nodes (set LOCAL_WORLD_SIZE)", world, nnodes)
			}
			p.LocalSize = world / nnodes
		default:
			p.LocalSize = 1
		}
		if hasLRank {
			p.LocalRank = lrank
		} else if p.LocalSize > 1 {
			return p, fmt.Errorf("LOCAL_RANK is not set but %d processes share each node", p.LocalSize)
		}
		if hasNNodes && p.LocalSize*nnodes != world {
			return p, fmt.Errorf("WORLD_SIZE=%d but NNODES=%d nodes of LOCAL_WORLD_SIZE=%d processes make %d", world, nnodes, p.LocalSize, nnodes*p.LocalSize)
		}
		if hasNode && p.LocalSize > 0 && rank/p.LocalSize != node {
			return p, fmt.Errorf("RANK=%d with %d processes per node is on node %d, but NODE_RANK=%d", rank, p.LocalSize, rank/p.LocalSize, node)
		}
	} else { // one process per node
		p.Rank, p.Size, p.LocalSize = node, nnodes, 1
		if hasLRank && lrank != 0 {
			return p, fmt.Errorf("LOCAL_RANK=%d without RANK: one process per node has local rank 0 (set RANK and WORLD_SIZE for one process per GPU)", lrank)
		}
	}
	var err error
	if p.Size > 1 {
		p.Addr, err = masterAddr(env, "", " (torchrun sets it from --master_addr or --rdzv_endpoint)")
	}
	return p, err
}

// slurmEnv: SLURM_PROCID of SLURM_NTASKS, SLURM_LOCALID of the tasks of this node, the first host
// of the step's node list as the rendezvous host unless MASTER_ADDR is set.
func slurmEnv(env Getenv) (Process, error) {
	r := &intReader{env: env}
	rank, hasRank := r.get("SLURM_PROCID")
	ntasks, hasN := r.get("SLURM_NTASKS")
	if !hasN {
		ntasks, hasN = r.get("SLURM_NPROCS")
	}
	nnodes, hasNodes := r.get("SLURM_NNODES")
	if !hasNodes {
		nnodes, hasNodes = r.get("SLURM_JOB_NUM_NODES")
	}
	lrank, hasLRank := r.get("SLURM_LOCALID")
	if r.err != nil {
		return Process{}, r.err
	}
	var p Process
	if !hasN {
		return p, fmt.Errorf("SLURM_NTASKS is not set")
	}
	if !hasRank {
		return p, fmt.Errorf("SLURM_NTASKS=%d is set but SLURM_PROCID is not (start fewstep with srun)", ntasks)
	}
	p.Rank, p.Size = rank, ntasks
	p.LocalSize = 1
	if tpn, ok := env("SLURM_NTASKS_PER_NODE"); ok { // "4", or "4(x2)" under sbatch
		s := tpn
		if i := strings.IndexByte(s, '('); i >= 0 {
			s = s[:i]
		}
		if i := strings.IndexByte(s, ','); i >= 0 {
			return p, fmt.Errorf("SLURM_NTASKS_PER_NODE=%q: nodes with different numbers of tasks are not supported", tpn)
		}
		v, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return p, fmt.Errorf("SLURM_NTASKS_PER_NODE=%q is not a number of tasks", tpn)
		}
		p.LocalSize = v
	} else if hasNodes {
		if nnodes < 1 || ntasks%nnodes != 0 {
			return p, fmt.Errorf("SLURM_NTASKS=%d tasks do not split evenly over SLURM_NNODES=%d nodes", ntasks, nnodes)
		}
		p.LocalSize = ntasks / nnodes
	}
	if hasLRank {
		p.LocalRank = lrank
	} else if p.LocalSize > 1 {
		return p, fmt.Errorf("SLURM_LOCALID is not set but %d tasks share each node", p.LocalSize)
	}
	if hasNodes && p.LocalSize*nnodes != ntasks {
		return p, fmt.Errorf("SLURM_NTASKS=%d but SLURM_NNODES=%d nodes of %d tasks make %d", ntasks, nnodes, p.LocalSize, nnodes*p.LocalSize)
	}
	if p.Size > 1 {
		first, err := firstHost(env)
		if err != nil {
			return p, err
		}
		if p.Addr, err = masterAddr(env, first, " (or SLURM_JOB_NODELIST)"); err != nil {
			return p, err
		}
	}
	return p, nil
}

// firstHost is the first host of Slurm's node list ("" when no list is set).
func firstHost(env Getenv) (string, error) {
	for _, k := range []string{"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"} {
		if v, ok := env(k); ok && strings.TrimSpace(v) != "" {
			hosts, err := ExpandHostlist(v)
			if err != nil {
				return "", fmt.Errorf("%s: %w", k, err)
			}
			return hosts[0], nil
		}
	}
	return "", nil
}

// mpiEnv: Open MPI's OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE}, or MPICH's / Intel MPI's
// PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS. The rendezvous host is MASTER_ADDR, or the
// first host of Slurm's node list under srun --mpi.
func mpiEnv(env Getenv) (Process, error) {
	r := &intReader{env: env}
	keys := [4]string{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}
	if _, ok := env("OMPI_COMM_WORLD_SIZE"); !ok {
		if _, ok := env("OMPI_COMM_WORLD_RANK"); !ok {
			keys = [4]string{"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"}
		}
	}
	rank, hasRank := r.get(keys[0])
	size, hasSize := r.get(keys[1])
	lrank, hasLRank := r.get(keys[2])
	lsize, hasLSize := r.get(keys[3])
	if r.err != nil {
		return Process{}, r.err
	}
	var p Process
	switch {
	case !hasRank:
		return p, fmt.Errorf("%s is not set", keys[0])
	case !hasSize:
		return p, fmt.Errorf("%s=%d is set but %s is not", keys[0], rank, keys[1])
	}
	p.Rank, p.Size, p.LocalSize = rank, size, 1
	if hasLSize {
		p.LocalSize = lsize
	}
	if hasLRank {
		p.LocalRank = lrank
	} else if p.LocalSize > 1 {
		return p, fmt.Errorf("%s is not set but %s=%d processes share the node", keys[2], keys[3], p.LocalSize)
	}
	if p.Size > 1 {
		first, err := firstHost(env)
		if err != nil {
			return p, err
		}
		if p.Addr, err = masterAddr(env, first, " (mpirun -x MASTER_ADDR=host)"); err != nil {
			return p, err
		}
	}
	return p, nil
}

// ExpandHostlist expands a Slurm host list: "gpu[01-04,07],login2" is gpu01, gpu02, gpu03, gpu04,
// gpu07, login2. Ranges keep the zero padding of their first number; several bracket groups in a
// name multiply ("r[1-2]n[1-2]": r1n1, r1n2, r2n1, r2n2).
func ExpandHostlist(s string) ([]string, error) {
	var out []string
	depth, start := 0, 0
	for i := 0; i <= len(s); i++ {
		if i < len(s) {
			switch s[i] {
			case '[':
				depth++
				if depth > 1 {
					return nil, fmt.Errorf("host list %q: nested '[' at %d", s, i)
				}
				continue
			case ']':
				depth--
				if depth < 0 {
					return nil, fmt.Errorf("host list %q: ']' without '[' at %d", s, i)
				}
				continue
			case ',':
				if depth > 0 {
					continue
				}
			default:
				continue
			}
		} else if depth != 0 {
			return nil, fmt.Errorf("host list %q: '[' not closed", s)
		}
		item := strings.TrimSpace(s[start:i])
		start = i + 1
		if item == "" {
			continue
		}
		hosts, err := expandHost(item)
		if err != nil {
			return nil, fmt.Errorf("host list %q: %w", s, err)
		}
		out = append(out, hosts...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("host list %q names no host", s)
	}
	return out, nil
}

// expandHost expands one name with bracket groups.
func expandHost(item string) ([]string, error) {
	open := strings.IndexByte(item, '[')
	if open < 0 {
		return []string{item}, nil
	}
	end := strings.IndexByte(item, ']')
	prefix, body, rest := item[:open], item[open+1:end], item[end+1:]
	tails, err := expandHost(rest)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, part := range strings.Split(body, ",") {
		lo, hi, dash := strings.Cut(strings.TrimSpace(part), "-")
		if !dash {
			hi = lo
		}
		a, err1 := strconv.Atoi(lo)
		b, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || a < 0 || b < a {
			return nil, fmt.Errorf("%q: range %q is not N or N-M with N ≤ M", item, part)
		}
		if b-a > 1<<16 {
			return nil, fmt.Errorf("%q: range %q is too long", item, part)
		}
		for v := a; v <= b; v++ {
			num := fmt.Sprintf("%0*d", len(lo), v)
			for _, t := range tails {
				out = append(out, prefix+num+t)
			}
		}
	}
	return out, nil
}
