from worktree_swarm.cli.main import main

main()
