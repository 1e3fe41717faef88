package dist

import (
	"slices"
	"strings"
	"testing"
)

// TestProcessFromEnv: the environments of torchrun (one process per GPU and one per node), Slurm's
// srun (with its node lists) and MPI launchers (Open MPI, MPICH), and the missing or conflicting
// variables that must be errors naming them.
func TestProcessFromEnv(t *testing.T) {
	for _, tc := range []struct {
		name     string
		launcher string
		env      map[string]string
		want     Process
		err      []string // substrings of the error; nil: no error
	}{
		{"no launcher", "auto", map[string]string{"HOME": "/root"}, Process{Size: 1, LocalSize: 1}, nil},
		{"none ignores the environment", "none", map[string]string{"RANK": "3", "WORLD_SIZE": "8"}, Process{Size: 1, LocalSize: 1}, nil},
		{"torchrun one process per GPU", "auto",
			map[string]string{"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "node0", "MASTER_PORT": "1234", "NODE_RANK": "1", "NNODES": "2"},
			Process{Rank: 5, Size: 8, LocalRank: 1, LocalSize: 4, Addr: "node0:1234", Launcher: "torchrun"}, nil},
		{"torchrun's agent holds MASTER_PORT", "auto",
			map[string]string{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "29500", "TORCHELASTIC_USE_AGENT_STORE": "True"},
			Process{Rank: 1, Size: 2, LocalSize: 1, Addr: "n0:29501", Launcher: "torchrun"}, nil},
		{"FEWSTEP_RDZV_PORT wins", "auto",
			map[string]string{"NODE_RANK": "0", "NNODES": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "29500", "FEWSTEP_RDZV_PORT": "4444"},
			Process{Size: 2, LocalSize: 1, Addr: "n0:4444", Launcher: "torchrun"}, nil},
		{"bad FEWSTEP_RDZV_PORT", "auto", map[string]string{"NODE_RANK": "0", "NNODES": "2", "MASTER_ADDR": "n0", "FEWSTEP_RDZV_PORT": "x"},
			Process{}, []string{`FEWSTEP_RDZV_PORT="x"`}},
		{"torchrun one process per node", "auto",
			map[string]string{"NODE_RANK": "2", "NNODES": "4", "MASTER_ADDR": "10.0.0.1"},
			Process{Rank: 2, Size: 4, LocalSize: 1, Addr: "10.0.0.1:29500", Launcher: "torchrun"}, nil},
		{"torchrun nproc_per_node=1", "torchrun",
			map[string]string{"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "fe80::1", "MASTER_PORT": "29400"},
			Process{Rank: 1, Size: 2, LocalSize: 1, Addr: "[fe80::1]:29400", Launcher: "torchrun"}, nil},
		{"torchrun local size from NNODES", "auto",
			map[string]string{"RANK": "3", "WORLD_SIZE": "4", "NNODES": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "n0"},
			Process{Rank: 3, Size: 4, LocalRank: 1, LocalSize: 2, Addr: "n0:29500", Launcher: "torchrun"}, nil},
		{"world size 1 needs no address", "auto", map[string]string{"RANK": "0", "WORLD_SIZE": "1"},
			Process{Size: 1, LocalSize: 1, Launcher: "torchrun"}, nil},
		{"RANK without WORLD_SIZE", "auto", map[string]string{"RANK": "1", "MASTER_ADDR": "n0"}, Process{}, []string{"RANK=1 is set but WORLD_SIZE is not"}},
		{"WORLD_SIZE without RANK", "auto", map[string]string{"WORLD_SIZE": "2", "MASTER_ADDR": "n0"}, Process{}, []string{"WORLD_SIZE=2 is set but RANK"}},
		{"NODE_RANK without NNODES", "auto", map[string]string{"NODE_RANK": "1", "MASTER_ADDR": "n0"}, Process{}, []string{"NODE_RANK=1 is set but NNODES is not"}},
		{"no MASTER_ADDR", "auto", map[string]string{"RANK": "1", "WORLD_SIZE": "2"}, Process{}, []string{"torchrun launch", "MASTER_ADDR is not set"}},
		{"RANK out of range", "auto", map[string]string{"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "n0"}, Process{}, []string{"process rank 2 of 2"}},
		{"not an integer", "auto", map[string]string{"RANK": "one", "WORLD_SIZE": "2"}, Process{}, []string{`RANK="one" is not an integer`}},
		{"bad port", "auto", map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "99999"}, Process{}, []string{`MASTER_PORT="99999"`}},
		{"NODE_RANK disagrees with RANK", "auto",
			map[string]string{"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "NODE_RANK": "0", "MASTER_ADDR": "n0"},
			Process{}, []string{"RANK=5 with 4 processes per node is on node 1, but NODE_RANK=0"}},
		{"WORLD_SIZE uneven over NNODES", "auto", map[string]string{"RANK": "0", "WORLD_SIZE": "5", "NNODES": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "n0"},
			Process{}, []string{"WORLD_SIZE=5 processes do not split evenly over NNODES=2"}},
		{"LOCAL_RANK missing with several per node", "auto", map[string]string{"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "n0"},
			Process{}, []string{"LOCAL_RANK is not set but 4 processes share each node"}},
		{"slurm", "auto",
			map[string]string{"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_NNODES": "4", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "2(x4)",
				"SLURM_JOB_NODELIST": "gpu[01-04,07],login2"},
			Process{Rank: 6, Size: 8, LocalSize: 2, Addr: "gpu01:29500", Launcher: "slurm"}, nil},
		{"slurm one task per node", "auto",
			map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "a100-[7-8]", "SLURM_JOB_NODELIST": "a100-[1-8]"},
			Process{Rank: 1, Size: 2, LocalSize: 1, Addr: "a100-7:29500", Launcher: "slurm"}, nil},
		{"slurm MASTER_ADDR wins", "slurm",
			map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n[1-2]", "MASTER_ADDR": "head", "MASTER_PORT": "4000"},
			Process{Size: 2, LocalSize: 1, Addr: "head:4000", Launcher: "slurm"}, nil},
		{"slurm without srun", "auto", map[string]string{"SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "n1"}, Process{}, []string{"slurm launch", "SLURM_PROCID is not", "srun"}},
		{"slurm without a node list", "auto", map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_LOCALID": "0"}, Process{}, []string{"MASTER_ADDR is not set", "SLURM_JOB_NODELIST"}},
		{"slurm bad node list", "auto", map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n[3-1]"}, Process{}, []string{"SLURM_JOB_NODELIST", `range "3-1"`}},
		{"slurm uneven tasks", "auto", map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_NNODES": "2", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "n[1-2]"}, Process{}, []string{"SLURM_NTASKS=3 tasks do not split evenly over SLURM_NNODES=2"}},
		{"openmpi", "auto",
			map[string]string{"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "MASTER_ADDR": "n0"},
			Process{Rank: 3, Size: 4, LocalRank: 1, LocalSize: 2, Addr: "n0:29500", Launcher: "mpi"}, nil},
		{"mpich", "auto", map[string]string{"PMI_RANK": "1", "PMI_SIZE": "2", "MASTER_ADDR": "n0"},
			Process{Rank: 1, Size: 2, LocalSize: 1, Addr: "n0:29500", Launcher: "mpi"}, nil},
		{"mpi under srun takes the node list", "auto",
			map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "c[10-11]"},
			Process{Rank: 1, Size: 2, LocalSize: 1, Addr: "c10:29500", Launcher: "mpi"}, nil},
		{"mpi without MASTER_ADDR", "auto", map[string]string{"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, Process{}, []string{"mpi launch", "MASTER_ADDR is not set"}},
		{"mpi rank without size", "auto", map[string]string{"OMPI_COMM_WORLD_RANK": "1"}, Process{}, []string{"OMPI_COMM_WORLD_RANK=1 is set but OMPI_COMM_WORLD_SIZE is not"}},
		{"torchrun inside slurm", "auto",
			map[string]string{"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "n0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
			Process{Rank: 9, Size: 16, LocalRank: 1, LocalSize: 8, Addr: "n0:29500", Launcher: "torchrun"}, nil},
		{"unknown launcher", "pbs", map[string]string{}, Process{}, []string{`--launcher "pbs"`, "auto, none, torchrun, slurm, mpi"}},
	} {
		got, err := ProcessFromEnv(tc.launcher, EnvMap(tc.env))
		if tc.err == nil {
			if err != nil || got != tc.want {
				t.Errorf("%s: %+v, %v; want %+v", tc.name, got, err, tc.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: %+v and no error, want one saying %q", tc.name, got, tc.err)
			continue
		}
		for _, w := range tc.err {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.name, err, w)
			}
		}
	}
}

// TestExpandHostlist: Slurm's bracket forms, against lists written out by hand.
func TestExpandHostlist(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"node1", []string{"node1"}},
		{"gpu[01-04,07],login2", []string{"gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "login2"}},
		{"a,b, c", []string{"a", "b", "c"}},
		{"n[8-11]", []string{"n8", "n9", "n10", "n11"}},
		{"n[098-101]", []string{"n098", "n099", "n100", "n101"}},
		{"r[1-2]-n[1,3]", []string{"r1-n1", "r1-n3", "r2-n1", "r2-n3"}},
		{"x[1]y,z[5-6]", []string{"x1y", "z5", "z6"}},
	} {
		got, err := ExpandHostlist(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "n[1-2", "n]1[", "n[[1]]", "n[a-b]", "n[5-2]", ",", "n[1-]"} {
		if got, err := ExpandHostlist(bad); err == nil {
			t.Errorf("ExpandHostlist(%q) = %q and no error", bad, got)
		}
	}
}
