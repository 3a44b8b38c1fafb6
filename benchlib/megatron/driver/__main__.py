from benchlib.megatron.driver.train import main

raise SystemExit(main())
