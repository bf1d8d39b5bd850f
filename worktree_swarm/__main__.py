from worktree_swarm.cli import main

main()
